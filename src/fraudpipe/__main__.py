from fraudpipe.cli import main

main()
