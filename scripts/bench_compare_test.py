#!/usr/bin/env python3
"""Checks of scripts/bench_compare.py's parsing and table, without running either benchmark:
    python3 scripts/bench_compare_test.py"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_compare  # noqa: E402


def rec(impl, rnd, tok, rss_gb, model="40m"):
    rows = [{"impl": impl, "model": model, "workload": w, "tokens_per_s": t} for w, t in tok.items()]
    return {"impl": impl, "model": model, "round": rnd, "rows": rows, "rss": rss_gb * 1e9,
            "user": 0.0, "sys": 0.0}


class ParseRows(unittest.TestCase):
    def test_keeps_json_lines_only(self):
        text = "warming up\n{\"impl\":\"rspo\",\"model\":\"40m\",\"workload\":\"train\",\"tokens_per_s\":4.5}\n"
        rows = bench_compare.parse_rows(text)
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0]["tokens_per_s"], 4.5)

    def test_line_without_a_field_is_an_error(self):
        with self.assertRaisesRegex(ValueError, "tokens_per_s"):
            bench_compare.parse_rows("{\"impl\":\"rspo\",\"model\":\"m\",\"workload\":\"train\"}")


class Table(unittest.TestCase):
    def test_ratio_is_per_round_lowest_to_highest(self):
        # Round 1: 100 / 200 = 0.50; round 2: 150 / 100 = 1.50 (ratios of the same round,
        # not of the extremes: 150 / 200 = 0.75 and 100 / 100 = 1.00 would be wrong).
        records = [rec("rspo", 1, {"train": 100}, 1.0), rec("torch", 1, {"train": 200}, 2.0),
                   rec("rspo", 2, {"train": 150}, 1.5), rec("torch", 2, {"train": 100}, 2.0)]
        table = bench_compare.build_table(records).splitlines()
        train = [c.strip() for c in table[2].strip("|").split("|")]
        self.assertEqual(train, ["train", "100-150", "100-200", "0.50-1.50"])
        rss = [c.strip() for c in table[3].strip("|").split("|")]
        self.assertEqual(rss, ["peak RSS (GB)", "1.00-1.50", "2.00", "0.50-0.75"])

    def test_two_models_side_by_side_and_a_missing_side(self):
        records = [rec("rspo", 1, {"generate": 50}, 1.0, "a"), rec("torch", 1, {"generate": 25}, 1.0, "a"),
                   rec("rspo", 1, {"generate": 10}, 4.0, "b")]
        table = bench_compare.build_table(records).splitlines()
        head = [c.strip() for c in table[0].strip("|").split("|")]
        self.assertEqual(head[1], "a: ours tok/s")
        self.assertEqual(head[4], "b: ours tok/s")
        gen = [c.strip() for c in table[2].strip("|").split("|")]
        self.assertEqual(gen, ["generate", "50", "25", "2.00", "10", "-", "-"])


class CpuDescription(unittest.TestCase):
    INFO = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
            "model name\t: AMD EPYC\nflags\t\t: fpu fma avx2 avx512f avx512bw\n\n"
            "processor\t: 1\ncpu family\t: 99\nmodel name\t: other\n")

    def test_first_processor_with_family_model_and_vector_width(self):
        self.assertEqual(bench_compare.cpu_description(self.INFO),
                         "AMD EPYC (family 26 model 2, AVX-512)")

    def test_without_avx512(self):
        info = self.INFO.replace(" avx512f avx512bw", "")
        self.assertEqual(bench_compare.cpu_description(info), "AMD EPYC (family 26 model 2, AVX2)")


if __name__ == "__main__":
    unittest.main()
