"""Interest model (PyTorch only: never Litestar or SQLAlchemy).

Entry points for the rest of the system, each in its own module so importing one does not pull
in the others:

- data.read_behaviour_file(path) -> Iterator[BehaviourRow]; data.sequences_by_user(rows);
  data.make_click_example(decision_ts, user_events, candidate, context, clicked)
- training.train_interest(sequences, click_examples, model_config=None, train_config=None,
  warm_start=None) -> TrainResult; TrainResult.save(root, version) -> <root>/interest/<version>/
- training.evaluate_checkpoint(path, sequences, click_examples) -> report;
  evaluation.format_report(report) -> str
- checkpoint.load_checkpoint(path) -> LoadedCheckpoint
- scorer.InterestScorerHolder(path, precision="fp32"|"int8") — the Scorer serving uses; .load(path)
  hot-swaps; .recommend(history, k); .attribution(context, candidate); .status()
- python -m adserve.interest.train_ddp --events FILE --out DIR (also under torchrun)
"""
