from common.provider.cli import main

main()
