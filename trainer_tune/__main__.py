from trainer_tune.run.main import main

main()
