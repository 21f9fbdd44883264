"""Vowpal Wabbit contextual bandit: featurisation, policy, reward join, learning, off-policy evaluation.

Pure: imports neither torch, Litestar nor SQLAlchemy. Modules, in the order data flows:

- `features`  VW text, one pure function per namespace
- `rewards`   served decisions + clicks (+ conversions) → labelled rewards (`join_rewards`)
- `records`   `LoggedDecision`: a decision with its outcome, read by learning and OPE
- `policy`    `VWPolicy` (choose / learn / save / load / reload) and `PolicyConfig`
- `ope`       IPS, SNIPS, DR with bootstrap intervals and effective sample size
- `obd`       the same path on the Open Bandit Dataset (`python -m adserve.bandit.obd DIR`)

Nothing is re-exported here so that importing the pure reward join does not load VW.
"""
