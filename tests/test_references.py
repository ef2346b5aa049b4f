import pyarrow as pa
import pytest

from clipbench.errors import InputError
from clipbench.references import SHIPPED, check_references, read_references

HEADER = "dataset,model,direction,metric,k,value,source\n"


def metrics_rows(value: float, low: float, high: float, metric="recall_at_5", n=1000):
    return {
        "model": "mine",
        "direction": "text_to_image",
        "metric": metric,
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "n_queries": n,
    }


def test_shipped_table_holds_the_published_figures():
    refs = read_references([SHIPPED])
    flickr = refs[("flickr30k-1k", "openai/ViT-B-16", "image_to_text", "recall_at_1", None)]
    assert flickr.value == pytest.approx(0.822) and "openclip_retrieval_results" in flickr.source
    coco = refs[("mscoco-5k", "openai/RN50", "text_to_image", "recall_at_10", None)]
    assert coco.value == pytest.approx(0.6459)
    seed = refs[("pokemon-blip-captions", "openai/ViT-B-16", "text_to_image", "hits_at_k", 5)]
    assert seed.value == 400
    assert len(refs) == 3 * 2 * 2 * 3 + 4


def test_a_users_row_replaces_the_shipped_one(tmp_path):
    mine = tmp_path / "mine.csv"
    mine.write_text(HEADER + "flickr30k-1k,openai/RN50,text_to_image,recall_at_1,,0.5,my run\n")
    refs = read_references([SHIPPED, mine])
    assert refs[("flickr30k-1k", "openai/RN50", "text_to_image", "recall_at_1", None)].value == 0.5


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("d,m,sideways,recall_at_1,,0.5,s", "direction"),
        ("d,m,text_to_image,hits_at_k,,5,s", "needs its k"),
        ("d,m,text_to_image,recall_at_1,,half,s", "half"),
    ],
)
def test_bad_rows_are_named(tmp_path, row, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + row + "\n")
    with pytest.raises(InputError, match=message):
        read_references([bad])
    with pytest.raises(InputError, match="does not exist"):
        read_references([tmp_path / "missing.csv"])


def test_wrong_figure_flagged_right_one_not(tmp_path):
    table = tmp_path / "refs.csv"
    table.write_text(
        HEADER
        + "set,pub/m,text_to_image,recall_at_5,,0.805,right: 0.5 points off, inside 1 point\n"
        + "set,pub/m,text_to_image,recall_at_1,,0.700,wrong: 10 points off\n"
        + "set,pub/m,text_to_image,hits_at_k,5,412,hits at another K: not compared\n"
        + "set,other/m,text_to_image,recall_at_5,,0.1,another model's\n"
    )
    metrics = pa.Table.from_pylist(
        [
            metrics_rows(0.80, 0.797, 0.803),  # a narrow interval: the 1-point floor decides
            metrics_rows(0.60, 0.55, 0.65, "recall_at_1"),  # 5-point half-width < 10 off
            metrics_rows(400, 380, 420, "hits_at_k"),
        ]
    )
    checks = check_references(metrics, read_references([table]), "set", {"mine": "pub/m"}, 10, 0.01)
    rows = {r["metric"]: r for r in checks.to_pylist()}
    assert set(rows) == {"recall_at_5", "recall_at_1"}
    assert rows["recall_at_5"]["reproduced"] and rows["recall_at_5"]["tolerance"] == 0.01
    assert not rows["recall_at_1"]["reproduced"]
    assert rows["recall_at_1"]["tolerance"] == pytest.approx(0.05)  # the interval's half-width
    assert rows["recall_at_1"]["difference"] == pytest.approx(-0.1)
    # Counts: one point of the queries is 10 hits of 1000; at K = 5 the hits@5 row applies.
    at_five = check_references(metrics, read_references([table]), "set", {"mine": "pub/m"}, 5, 0.01)
    hits = {r["metric"]: r for r in at_five.to_pylist()}["hits_at_k"]
    assert hits["tolerance"] == pytest.approx(20) and hits["reproduced"]  # 12 off, ±20
