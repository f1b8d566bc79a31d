"""The ``-k`` expression: grammar, precedence, matching and error messages."""

from __future__ import annotations

import pytest

from expkit.errors import UsageError
from expkit.keywords import KeywordExpression, compile_keyword_expression

NODE = ["exp_iris.py::exp_rbf_svm", "exp_iris.py", "exp_rbf_svm", "C=1.0"]


def matches(text: str, names: list[str]) -> bool:
    return compile_keyword_expression(text).matches(names)


def error_of(text: str) -> str:
    with pytest.raises(UsageError) as info:
        compile_keyword_expression(text)
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("svm", True),
        ("linear", False),
        ("svm and not linear", True),
        ("svm and linear", False),
        ("linear or svm", True),
        ("not svm", False),
        ("not not svm", True),
        ("iris and rbf and svm", True),
        ("linear or poly or sigmoid", False),
    ],
)
def test_plain_expressions(text: str, expected: bool) -> None:
    assert matches(text, NODE) is expected


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["a"], True),  # a alone satisfies the "or"
        (["b"], False),  # b needs c: "and" binds tighter than "or"
        (["b", "c"], True),
        ([], False),
    ],
)
def test_and_binds_tighter_than_or(names: list[str], expected: bool) -> None:
    assert matches("a or b and c", names) is expected


def test_not_binds_tighter_than_and_and_or() -> None:
    # "not a and b" is "(not a) and b", not "not (a and b)".
    assert matches("not a and b", ["b"]) is True
    assert matches("not a and b", ["a", "b"]) is False
    assert matches("not a and b", []) is False
    # "not a or b" is "(not a) or b".
    assert matches("not a or b", ["a", "b"]) is True
    assert matches("not a or b", ["a"]) is False


def test_parentheses_override_precedence() -> None:
    assert matches("(a or b) and c", ["a"]) is False
    assert matches("(a or b) and c", ["a", "c"]) is True
    assert matches("not (a or b)", ["c"]) is True
    assert matches("not (a or b)", ["b"]) is False
    assert matches("((a))", ["a"]) is True


def test_whitespace_is_free_around_parentheses() -> None:
    assert matches("(svm)and(not linear)", NODE) is True
    assert matches("  svm \t and\nnot linear  ", NODE) is True


def test_matching_is_case_insensitive_both_ways() -> None:
    assert matches("SVM", ["exp_rbf_svm"]) is True
    assert matches("svm", ["EXP_RBF_SVM"]) is True
    assert matches("Rbf_Svm", ["exp_rbf_svm"]) is True


def test_an_ident_matches_a_substring_of_any_name() -> None:
    assert matches("iris", ["exp_rbf_svm", "exp_iris.py"]) is True
    assert matches("iris", ["exp_rbf_svm"]) is False


def test_an_ident_does_not_span_two_names() -> None:
    assert matches("ab", ["a", "b"]) is False


@pytest.mark.parametrize(
    "ident",
    [
        "exp_iris.py::exp_rbf_svm",
        "exp_iris.py",
        "sub/dir/exp_iris.py",
        "exp_rbf_svm[0]",
        "a+b",
        "x-y",
        "back\\slash",
        "café",
    ],
)
def test_idents_take_path_and_node_id_characters(ident: str) -> None:
    expression = compile_keyword_expression(ident)
    assert expression.matches([f"prefix {ident} suffix"]) is True
    assert expression.matches(["unrelated"]) is False


def test_node_id_ident_matches_the_node() -> None:
    assert matches("exp_iris.py::exp_rbf and not exp_iris.py::exp_lin", NODE) is True
    assert matches("exp_rbf_svm[", ["exp_rbf_svm[C=3]"]) is True


def test_keywords_are_lowercase_only() -> None:
    # Upper-case words are identifiers, as in pytest.
    assert matches("AND", ["grand"]) is True
    assert matches("Not", ["nothing"]) is True


def test_keyword_inside_an_ident_is_part_of_it() -> None:
    assert matches("android", ["android_app"]) is True
    assert matches("notes", ["notes"]) is True
    assert matches("oracle or nothing", ["oracle"]) is True


def test_matches_accepts_any_iterable_and_evaluates_it_once() -> None:
    expression = compile_keyword_expression("a and b")
    assert expression.matches(name for name in ["xa", "xb"]) is True


def test_compiled_expression_is_reusable_and_keeps_its_text() -> None:
    expression = compile_keyword_expression("svm and not linear")
    assert isinstance(expression, KeywordExpression)
    assert expression.text == "svm and not linear"
    assert expression.matches(["svm"]) is True
    assert expression.matches(["linear_svm"]) is False
    assert expression.matches(["svm"]) is True


def test_long_chains_do_not_hit_the_recursion_limit() -> None:
    text = " or ".join(f"name{i}" for i in range(5000))
    assert matches(text, ["name4999"]) is True
    assert matches(text, ["other"]) is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "at column 1: expected 'not' or '(' or identifier; got end of input"),
        ("   ", "at column 4: expected 'not' or '(' or identifier; got end of input"),
        ("svm and", "at column 8: expected 'not' or '(' or identifier; got end of input"),
        ("not", "at column 4: expected 'not' or '(' or identifier; got end of input"),
        ("and svm", "at column 1: expected 'not' or '(' or identifier; got 'and'"),
        ("svm or or x", "at column 8: expected 'not' or '(' or identifier; got 'or'"),
        ("(svm", "at column 5: expected ')'; got end of input"),
        ("svm)", "at column 4: expected end of input; got ')'"),
        ("svm linear", "at column 5: expected end of input; got identifier"),
        ("()", "at column 2: expected 'not' or '(' or identifier; got ')'"),
        ("svm and $x", "at column 9: unexpected character '$'"),
        ("C<3", "at column 2: unexpected character '<'"),
    ],
)
def test_syntax_errors_say_where_and_what(text: str, message: str) -> None:
    assert error_of(text) == f"wrong expression passed to '-k': {text}: {message}"


def test_error_is_one_line() -> None:
    assert "\n" not in error_of("a and (b or")


def test_too_deep_nesting_is_a_usage_error_not_a_crash() -> None:
    text = "not " * 500 + "a"
    message = error_of(text)
    assert "nested more than" in message
    assert "at column 401:" in message
    # Moderate nesting is fine.
    assert matches("(" * 50 + "a" + ")" * 50, ["a"]) is True


def test_an_identifier_may_hold_an_equals_sign_to_pick_sweep_points() -> None:
    point = ["exp_iris.py::exp_rbf_svm[C=0.1-kernel=rbf]", "C=0.1", "kernel=rbf"]
    assert matches("C=0.1 and kernel=rbf", point) is True
    assert matches("C=0.1 and kernel=linear", point) is False
