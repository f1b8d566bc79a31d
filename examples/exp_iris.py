"""The paper's Listing 1 as a module experiment: an SVM with an RBF kernel on the iris data.

Run it with ``expkit run examples/exp_iris.py -o C=3``.
"""

from sklearn import datasets, svm

import expkit


@expkit.config
def cfg():
    C = 1.0  # regularisation strength
    gamma = 0.7  # kernel coefficient of the RBF kernel
    train_size = 90  # how many of the 150 shuffled samples to train on


@expkit.fixture
def iris(_rnd):
    """The iris data set, shuffled with the run's own seeded generator."""
    data = datasets.load_iris()
    order = _rnd.permutation(data.target.size)
    return data.data[order], data.target[order]


def exp_rbf_svm(C, gamma, train_size, iris):
    x, y = iris
    clf = svm.SVC(C=C, kernel="rbf", gamma=gamma)
    clf.fit(x[:train_size], y[:train_size])
    return clf.score(x[train_size:], y[train_size:])
