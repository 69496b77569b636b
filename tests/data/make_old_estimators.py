"""Write estimator files as lgmstm wrote them before the estimators took
scikit-learn's MLP names (``epochs``, ``lr``, ``optimizer``), so that
tests/test_mlp_dropin.py can check that they still load and predict the
same:

    PYTHONPATH=<main at cfc702f, built> python tests/data/make_old_estimators.py tests/data/

writes ``estimator-regressor-cfc702f.npz`` (two outputs, the "momentum"
optimizer), ``estimator-classifier-cfc702f.npz`` (three text classes) and
``estimators-cfc702f-outputs.npz`` (the data and what each predicted), and
the two pickled in ``estimators-cfc702f.pkl``.
"""
import os
import pickle
import sys

import numpy as np
from sklearn.datasets import load_iris

from lgmstm.sklearn import LGMClassifier, LGMRegressor

folder = sys.argv[1]
X, y = load_iris(return_X_y=True)
labels = np.array(["setosa", "versicolor", "virginica"])[y]
regressor = LGMRegressor(hidden_layer_sizes=(5,), epochs=4, lr=0.01, optimizer="momentum",
                         batch_size=16, random_state=0).fit(X[:, :2], X[:, 2:])
classifier = LGMClassifier(hidden_layer_sizes=(4,), epochs=3, random_state=0).fit(X, labels)
regressor.save(os.path.join(folder, "estimator-regressor-cfc702f.npz"))
classifier.save(os.path.join(folder, "estimator-classifier-cfc702f.npz"))
np.savez(os.path.join(folder, "estimators-cfc702f-outputs.npz"), X=X,
         regressor_predict=regressor.predict(X[:, :2]),
         classifier_predict_proba=classifier.predict_proba(X),
         classifier_predict=classifier.predict(X).astype(str))
with open(os.path.join(folder, "estimators-cfc702f.pkl"), "wb") as f:
    pickle.dump({"regressor": regressor, "classifier": classifier}, f)
