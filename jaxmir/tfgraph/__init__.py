"""Frozen TensorFlow graphs (``.pb``): the only part of jaxmir that uses protobuf.

``graphdef`` parses the bytes, ``walk`` follows the inference path and reads
layers off it, ``convert`` turns what it finds into a :class:`jaxmir.spec.ModelSpec`.
Nothing outside this package imports it except :mod:`jaxmir.loading`, and only
when a ``.pb`` is read.
"""
