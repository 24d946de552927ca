from head_node.cli import main

main()
