from docklet.cli.main import main

main()
