"""Request-body examples for the OpenAPI document, keyed by operation id.

Each is a realistic request that succeeds as it stands (``/docs`` "Try it out" sends it
unedited), except that job examples name datasets by the placeholder ids of
:data:`EXAMPLE_DATASETS`: upload those arrays first (``POST /v1/datasets``) and use the ids the
server returns. ``tests/contract/test_openapi_examples.py`` sends every example and expects
success. :func:`service.openapi_doc.build_openapi` attaches them to the request bodies.

The data: six points on the unit circle in the plane, the target ``sin(3·angle)`` (a smooth
function a kernel should fit), and two test points between them.
"""

from __future__ import annotations

import math
from typing import Any

_ANGLES = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
_TEST_ANGLES = [0.5, 2.5]


def _circle(angles: list[float]) -> list[list[float]]:
    return [[round(math.cos(a), 4), round(math.sin(a), 4)] for a in angles]


def _target(angles: list[float]) -> list[float]:
    return [round(math.sin(3 * a), 4) for a in angles]


X_TRAIN = _circle(_ANGLES)
Y_TRAIN = _target(_ANGLES)
X_TEST = _circle(_TEST_ANGLES)
Y_TEST = _target(_TEST_ANGLES)

#: A three-layer ReLU network in NTK parameterization, closed by a dense readout.
RELU_NETWORK: dict[str, Any] = {"type": "network", "layers": [
    {"type": "dense", "w_std": 1.5, "b_std": 0.05}, {"type": "relu"},
    {"type": "dense", "w_std": 1.5, "b_std": 0.05}, {"type": "relu"},
    {"type": "dense", "w_std": 1.0, "b_std": 0.0},
]}
#: A small convolutional network (CNTK) on 4 × 4 single-channel images.
CONV_NETWORK: dict[str, Any] = {"type": "network", "layers": [
    {"type": "conv", "filter_shape": [3, 3], "padding": "SAME", "w_std": 1.5, "b_std": 0.05}, {"type": "relu"},
    {"type": "global_avg_pool"}, {"type": "dense", "w_std": 1.0},
]}
_IMAGES = [[[[round(math.sin(i + 0.7 * h + 0.3 * w), 3)] for w in range(4)] for h in range(4)] for i in range(2)]

#: Placeholder dataset id → the array it stands for (job examples refer to these ids).
EXAMPLE_DATASETS: dict[str, list[Any]] = {
    "ds_example_x_train": X_TRAIN,
    "ds_example_y_train": Y_TRAIN,
    "ds_example_x_test": X_TEST,
    "ds_example_y_test": Y_TEST,
}

_TRAJECTORY = {"times": [0.0, 1.0, 10.0, 100.0], "learning_rate": 1.0, "method": "flow"}


def _example(summary: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "value": value}


#: Operation id → example name → OpenAPI Example Object.
REQUEST_EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "computeKernels": {
        "relu_network": _example("NNGP and NTK of a deep ReLU network", {
            "kernel": RELU_NETWORK, "x1": X_TRAIN, "x2": X_TEST, "outputs": ["nngp", "ntk"]}),
        "two_layer_relu": _example("The lecture's two-layer ReLU NTK and its two parts", {
            "kernel": {"type": "two_layer_relu"}, "x1": X_TRAIN, "outputs": ["ntk", "ntk_a", "ntk_b"]}),
        "rbf": _example("A Gaussian (RBF) kernel in float32", {
            "kernel": {"type": "rbf", "lengthscale": 0.5}, "x1": X_TRAIN, "x2": X_TEST, "dtype": "float32"}),
        "polynomial": _example("The polynomial kernel (1 + ⟨x, x'⟩)²", {
            "kernel": {"type": "polynomial", "degree": 2, "c": 1.0}, "x1": X_TRAIN}),
        "convolutional": _example("A convolutional NTK on two 4 × 4 one-channel images (n × H × W × C)", {
            "kernel": CONV_NETWORK, "x1": _IMAGES, "outputs": ["ntk"]}),
    },
    "computeEmpiricalKernels": {
        "finite_relu_network": _example("The NTK of one ReLU network of width 256, and its distance to the limit", {
            "kernel": RELU_NETWORK, "width": 256, "seed": 0, "x1": X_TRAIN, "outputs": ["ntk", "nngp"]}),
    },
    "createModel": {
        "two_layer_relu": _example("Kernel regression with the two-layer ReLU NTK and a small ridge", {
            "kernel": {"type": "two_layer_relu"}, "which": "ntk", "x_train": X_TRAIN, "y_train": Y_TRAIN,
            "ridge": 1e-3, "ridge_mode": "absolute"}),
        "rbf": _example("Kernel ridge regression with an RBF kernel (relative ridge)", {
            "kernel": {"type": "rbf", "lengthscale": 0.7}, "x_train": X_TRAIN, "y_train": Y_TRAIN,
            "ridge": 0.01, "ridge_mode": "relative"}),
    },
    "predictWithModel": {
        "converged": _example("Predictions at t = ∞ (kernel regression) with variances", {
            "x_test": X_TEST, "time": None, "variance": True}),
        "early_stopped": _example("Predictions of the network trained for t = 5", {
            "x_test": X_TEST, "time": 5.0, "learning_rate": 1.0}),
    },
    "modelTrajectory": {
        "flow": _example("Gradient flow on the model's data, with a held-out test set", {
            **_TRAJECTORY, "x_test": X_TEST, "y_test": Y_TEST}),
        "gradient_descent": _example("Gradient descent: times are step counts", {
            "times": [0, 1, 10, 100], "learning_rate": 0.5, "method": "gd"}),
    },
    "computeTrajectory": {
        "relu_network_flow": _example("Training dynamics of a linearized ReLU network under gradient flow", {
            "kernel": RELU_NETWORK, "x_train": X_TRAIN, "y_train": Y_TRAIN, **_TRAJECTORY,
            "x_test": X_TEST, "y_test": Y_TEST}),
        "lecture_sum_loss": _example("The lecture's du/dt = −Ku: summed loss, gradient descent", {
            "kernel": {"type": "two_layer_relu"}, "x_train": X_TRAIN, "y_train": Y_TRAIN,
            "times": [0, 5, 50], "learning_rate": 0.1, "method": "gd", "loss_normalization": "sum"}),
    },
    "computeSpectrum": {
        "relu_network": _example("Eigenvalues of a ReLU network's NTK on the training inputs", {
            "kernel": RELU_NETWORK, "which": "ntk", "x": X_TRAIN}),
        "rbf_top_k": _example("The three largest eigenvalues of an RBF kernel", {
            "kernel": {"type": "rbf", "lengthscale": 1.0}, "x": X_TRAIN, "top_k": 3}),
    },
    "lazyTraining": {
        "two_layer_relu": _example("A two-layer ReLU network of width 512 beside its NTK prediction", {
            "kernel": {"type": "two_layer_relu"}, "width": 512, "seed": 0, "x_train": X_TRAIN, "y_train": Y_TRAIN,
            "steps": [0, 10, 100], "learning_rate": 1.0, "x_test": X_TEST, "y_test": Y_TEST}),
    },
    "createJob": {
        "gram": _example("A tiled NTK Gram matrix between two uploaded datasets", {
            "type": "gram", "kernel": RELU_NETWORK, "x1": "ds_example_x_train", "x2": "ds_example_x_test",
            "outputs": ["ntk"]}),
        "fit": _example("A kernel regression fit on uploaded datasets (the result is a model)", {
            "type": "fit", "kernel": {"type": "two_layer_relu"}, "x_train": "ds_example_x_train",
            "y_train": "ds_example_y_train", "ridge": 1e-3}),
        "trajectory": _example("A training trajectory on uploaded datasets", {
            "type": "trajectory", "kernel": {"type": "rbf", "lengthscale": 0.7}, "x_train": "ds_example_x_train",
            "y_train": "ds_example_y_train", "x_test": "ds_example_x_test", "y_test": "ds_example_y_test",
            **_TRAJECTORY}),
    },
}
