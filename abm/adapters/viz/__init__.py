"""``tme viz``: an interactive browser view of a live simulation or a run file, built on Solara and Mesa.

:mod:`abm.adapters.viz.server` checks the target and serves the page; :mod:`abm.adapters.viz.app` is the page
(Mesa's ``SolaraViz`` controls over :class:`abm.adapters.mesa_model.TMEModel`, or the replay of a run file);
:mod:`abm.adapters.viz.render` draws its figures with :mod:`abm.plots`. Needs ``pip install 'tme-abm[viz]'``;
nothing here is imported by ``import abm``.
"""
