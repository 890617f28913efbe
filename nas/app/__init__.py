"""The Pareto explorer (``nas app``): a Streamlit app over a search run.

``explorer.py`` is the Streamlit script; ``core.py`` turns a run (read through :mod:`nas.results` only) into a
table of trials, re-evaluates them against a constraint file, filters them and finds the Pareto front;
``figures.py`` draws the Plotly charts. ``core`` and ``figures`` import no Streamlit, so tests and
``bench/app_load.py`` use them directly.
"""
