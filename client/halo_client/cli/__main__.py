from halo_client.cli import main

main()
