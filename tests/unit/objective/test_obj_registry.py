import pytest

from rlpost.objective import Registry


def test_register_get_and_errors():
    reg: Registry = Registry("widget")

    @reg.register("a")
    def a() -> int:
        return 1

    reg.register("b", lambda: 2)
    assert reg.get("a")() == 1 and reg["b"]() == 2
    assert "a" in reg and "c" not in reg
    assert reg.names() == ["a", "b"] and list(reg) == ["a", "b"] and len(reg) == 2
    with pytest.raises(KeyError, match=r"unknown widget 'c'.*known: a, b"):
        reg.get("c")
    with pytest.raises(KeyError, match="already registered"):
        reg.register("a", lambda: 3)
    reg.register("a", lambda: 3, overwrite=True)
    assert reg.get("a")() == 3


def test_get_loads_user_file(tmp_path):
    f = tmp_path / "my_kl.py"
    f.write_text("def k4(d):\n    return d * 4\n")
    reg: Registry = Registry("KL estimator")
    assert reg.get(f"{f}:k4")(2) == 8
