import signal

from cli.supervise import Restarts, exit_reason


def test_exit_reasons_name_the_signal_or_the_status() -> None:
    assert exit_reason(-signal.SIGKILL) == "killed by SIGKILL"
    assert exit_reason(3) == "status 3"
    assert exit_reason(None) == "still running"


def test_restarts_back_off_and_forget_a_process_that_ran_for_a_while() -> None:
    restarts = Restarts(initial=1.0, maximum=8.0, stable_after=60.0)
    delays = [restarts.exited("resolver", now=100.0 + i, ran_for=1.0) for i in range(5)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert not restarts.is_due("resolver", 104.0 + 7.9)
    assert restarts.is_due("resolver", 104.0 + 8.0)
    restarts.started("resolver")
    assert restarts.waiting() == []
    assert restarts.exited("resolver", now=500.0, ran_for=120.0) == 1.0  # it had run fine: count starts over
    assert restarts.exited("issuer", now=500.0, ran_for=0.0) == 1.0  # counted per process
