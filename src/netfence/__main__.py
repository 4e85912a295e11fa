from netfence.cli.main import main

main()
