# The `python` ML sample: logistic regression on the iris petal measurements.
# Reads the single CSV in datasets/, writes the model and its accuracy to results/.
import glob
import sys

import joblib
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

files = glob.glob("datasets/*.csv")
if len(files) != 1:
    sys.exit(f"want one csv in datasets/, found {files}")
df = pd.read_csv(files[0])
X = df[["PetalLengthCm", "PetalWidthCm"]]
y = df["Species"]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, random_state=0)
model = LogisticRegression(max_iter=1000).fit(X_train, y_train)
acc = model.score(X_test, y_test)
print(f"accuracy {acc:.3f}")
joblib.dump(model, "results/model.bin")
with open("results/accuracy.txt", "w") as f:
    f.write(f"{acc:.3f}\n")
