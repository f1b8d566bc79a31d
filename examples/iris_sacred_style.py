"""The paper's Listing 1: an SVM on the iris data set, as a Sacred-style experiment.

Run it with ``python iris_sacred_style.py`` or
``python iris_sacred_style.py with C=3.4e-2 gamma=0.5``;
add ``-F runs`` to keep the run in a file store.
"""

from numpy.random import permutation
from sklearn import datasets, svm

from expkit import Experiment

ex = Experiment("iris_rbf_svm")


@ex.config
def cfg():
    C = 1.0  # regularisation strength
    gamma = 0.7  # kernel coefficient of the RBF kernel


@ex.automain
def run(C, gamma):
    iris = datasets.load_iris()
    per = permutation(iris.target.size)
    iris.data, iris.target = iris.data[per], iris.target[per]
    clf = svm.SVC(C=C, kernel="rbf", gamma=gamma)
    clf.fit(iris.data[:90], iris.target[:90])
    return clf.score(iris.data[90:], iris.target[90:])
