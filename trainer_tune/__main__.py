from trainer_tune.main import main

main()
