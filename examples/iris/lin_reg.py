"""Sample python algorithm for `make run --python`: logistic regression of the
iris dataset on petal length and width (Debian's python3-sklearn, python3-pandas,
python3-joblib; no network). Reads the one file in datasets/, writes
results/model.bin and results/result.txt."""
import glob
import os
import sys

import joblib
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

files = glob.glob("datasets/*")
if len(files) != 1:
    sys.exit("want exactly one file in datasets/, found %d" % len(files))
df = pd.read_csv(files[0])
X = df[["PetalLengthCm", "PetalWidthCm"]]
y = df["Species"]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, random_state=0)
model = LogisticRegression(max_iter=1000).fit(X_train, y_train)
acc = model.score(X_test, y_test)
print("accuracy %.3f on %d test rows" % (acc, len(X_test)))
os.makedirs("results", exist_ok=True)
joblib.dump(model, "results/model.bin")
with open("results/result.txt", "w") as f:
    f.write("accuracy %.3f on %d test rows\n" % (acc, len(X_test)))
