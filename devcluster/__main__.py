from devcluster.cli.entry import main

main()
