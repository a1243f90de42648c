"""Engines drive the coordinator and the learner step: sim (virtual time, one process) and dist (real processes).

sim.py     run_sim: the discrete-event simulation
launch.py  run_dist: a local launch of λ+1 processes, or one rank under torchrun
dist.py    the dist server and learner ranks, and their wire format
"""
