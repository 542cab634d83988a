# The `python` sample algorithm: adds --a and --b, writes results/result.txt.
import argparse
import os

p = argparse.ArgumentParser()
p.add_argument("--a", type=float, default=5)
p.add_argument("--b", type=float, default=10)
args = p.parse_args()
s = args.a + args.b
print("sum", s)
os.makedirs("results", exist_ok=True)
with open("results/result.txt", "w") as f:
    f.write(f"{s}\n")
