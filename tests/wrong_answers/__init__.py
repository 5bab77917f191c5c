"""Wrong answers to every exercise of duat.exercises, at least two each: one module per
notebook (ch01.py ... ch09.py), each defining WRONG = {exercise id: [answer, ...]}.
tests/test_exercises.py checks that the checker calls every one of them wrong, with a hint."""
