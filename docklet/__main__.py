from docklet.cli import main

main()
