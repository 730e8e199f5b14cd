"""dynode.solvers.tableau: every Runge-Kutta method is one consistent Butcher tableau."""

import pytest

import dynode as dn
from dynode.errors import ConfigurationError
from dynode.solvers import SOLVERS, Tableau

RK = [cls for cls in SOLVERS.values() if isinstance(getattr(cls, "tableau", None), Tableau)]


def test_every_runge_kutta_solver_has_a_tableau():
    assert {cls.name for cls in RK} == {"euler", "midpoint", "heun", "rk4", "dopri5", "tsit5", "bosh3"}


@pytest.mark.parametrize("cls", RK, ids=lambda c: c.name)
def test_tableau_is_consistent(cls):
    """Row sums are the nodes, the weights sum to 1, an error estimate's weights to 0."""
    tab = cls.tableau
    assert [sum(row) for row in tab.a] == pytest.approx(list(tab.c), abs=1e-14)
    assert sum(tab.b) == pytest.approx(1.0, abs=1e-14)
    assert cls().convergence_order == tab.order
    if tab.b_err is not None:
        assert sum(tab.b_err) == pytest.approx(0.0, abs=1e-14)
    if cls.adaptive:
        assert tab.fsal and tab.error_order < tab.order
    else:
        assert tab.stability_limit >= 2.0


def test_malformed_tableau_is_refused():
    with pytest.raises(ConfigurationError, match="Tableau of 2 stages"):
        Tableau(c=(0.0, 1.0), a=((), (0.5, 0.5)), b=(0.5, 0.5), order=2)
    with pytest.raises(ConfigurationError, match="error_order"):
        Tableau(c=(0.0,), a=((),), b=(1.0,), order=1, b_err=(0.0,))
    with pytest.raises(ConfigurationError, match="FSAL"):
        class NotFSAL(dn.solvers.AdaptiveSolver):
            tableau = dn.solvers.Heun.tableau
