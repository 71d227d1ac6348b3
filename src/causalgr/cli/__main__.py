from causalgr.cli import main

main()
