"""The emergence lab: train tiny transformers on synthetic data and probe spikes and sinks as they appear.

data.py    synthetic token streams (Bigram-Backcopy, Zipf), reproducible from a seed
model.py   a tiny decoder-only transformer with the paper's switches, readable by sinkhole's probe
train.py   the training loop, log-spaced checkpoints, what is measured at each
run.py     variants (one switch each), settings, typed results, resumable lab.json
(sinkhole/report/lab_*.py draws the terminal table, PNG figures and lab.html)
"""
