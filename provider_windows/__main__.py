from provider_windows.cli import main

main()
