"""Bridges to other libraries (optional: each module imports its library only when used).

* :mod:`diffinv.interop.deepinv`: deepinv ``Physics`` as diffinv operators, diffinv operators as
  deepinv physics, and a diffinv prior as a deepinv denoiser (extra ``diffinv[deepinv]``).
"""
