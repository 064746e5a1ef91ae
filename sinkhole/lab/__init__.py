"""The emergence lab: train tiny transformers and probe spikes and sinks as they appear, over seeds.

data.py    token streams (Bigram-Backcopy, Zipf, Python's docs as text), reproducible from a seed
model.py   a tiny decoder-only transformer with the paper's switches, readable by sinkhole's probe
train.py   the training loop, log-spaced checkpoints, what is measured at each
run.py     variants (one switch each), settings, resumable lab.json
The results it writes are typed in sinkhole/results/lab.py (checkpoints, runs, the lab) and
sinkhole/results/lab_claims.py (the paper's claims as data, mean +- sd over seeds, the verdict rule);
sinkhole/render/lab_*.py draws the terminal table, PNG figures and lab.html.
"""
