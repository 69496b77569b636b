"""The tests' one finite-difference oracle for a model's gradients."""
import numpy as np


def numerical_gradient(loss, params, name, h=1e-6):
    """Central differences of loss(params) with respect to params[name]
    (params: a dict of arrays, copied, never changed)."""
    params = {k: v.copy() for k, v in params.items()}
    array = params[name]
    grad = np.empty_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + h
        up = loss(params)
        array[index] = saved - h
        down = loss(params)
        array[index] = saved
        grad[index] = (up - down) / (2 * h)
    return grad
