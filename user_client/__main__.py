from user_client.cli import main

main()
