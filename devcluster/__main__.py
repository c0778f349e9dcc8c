from devcluster.entry import main

main()
