from p2pfs.cli import main

main()
