from docklet.agent.loop import main

main()
