from provider_macos.cli import main

main()
