"""channels-proxy: IPython 1.x/2.x frontends on a modern Jupyter server."""

__version__ = "0.1.0"
