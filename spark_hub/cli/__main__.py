from spark_hub.cli import main

main()
