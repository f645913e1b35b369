"""Panel geometry: inside the page, gutters kept, nothing overlapping, every panel once, and the
`rows` patterns fixed by their seed."""

from __future__ import annotations

import itertools

import pytest

from farm.comic.layout import LAYOUTS, Box, PageLayout, PageStyle, Slot, plan_pages
from farm.errors import InputError

A4_72DPI = (595, 842)
PAGES = [A4_72DPI, (842, 595), (700, 700)]
STYLE = PageStyle()


def extent(slot: Slot) -> Box:
    """The frame and its caption together: what must stay clear of the other panels."""
    boxes = [slot.frame] + ([slot.caption] if slot.caption else [])
    x, y = min(b.x for b in boxes), min(b.y for b in boxes)
    return Box(x, y, max(b.right for b in boxes) - x, max(b.bottom for b in boxes) - y)


def inside(inner: Box, outer: Box) -> bool:
    return (
        outer.x <= inner.x
        and outer.y <= inner.y
        and inner.right <= outer.right
        and inner.bottom <= outer.bottom
    )


def apart(a: Box, b: Box) -> int:
    """How far apart two boxes are along the axis that separates them (negative: overlap)."""
    return max(b.x - a.right, a.x - b.right, b.y - a.bottom, a.y - b.bottom)


def check_page(plan: PageLayout, page: tuple[int, int], style: PageStyle) -> None:
    margin = style.px(style.margin, page)
    gutter = style.px(style.gutter, page)
    border = style.px(style.border, page)
    content = Box(0, 0, *page).inset(margin)
    assert (plan.width, plan.height) == page
    for slot in plan.slots:
        assert inside(extent(slot), content)
        assert slot.image == slot.frame.inset(border)
        assert slot.image.w > 0 and slot.image.h > 0
        if slot.caption is not None:
            assert apart(slot.frame, slot.caption) >= 0
            assert slot.caption.w == slot.frame.w
    for a, b in itertools.combinations(plan.slots, 2):
        assert apart(extent(a), extent(b)) >= gutter, (a, b)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("captions", [True, False])
def test_panels_sit_inside_the_page_apart_and_each_once(layout, page, captions):
    for position in ("below", "above"):
        style = PageStyle(captions=position)
        for n in (1, 2, 3, 4, 5, 7, 11):
            aspects = [1.0, 1.5, 0.75][: min(n, 3)] * n
            plans = plan_pages(aspects[:n], layout, page, style=style, captions=captions, seed=n)
            for plan in plans:
                check_page(plan, page, style)
                assert all((s.caption is not None) == captions for s in plan.slots)
            placed = [s.index for plan in plans for s in plan.slots]
            assert placed == list(range(n))  # each once, in reading order
            assert all(plan.slots for plan in plans)


def test_captions_go_under_or_over_their_panel():
    below = plan_pages([1.0], "single", A4_72DPI)[0].slots[0]
    above = plan_pages([1.0], "single", A4_72DPI, style=PageStyle(captions="above"))[0].slots[0]
    assert below.caption.y >= below.frame.bottom
    assert above.caption.bottom <= above.frame.y


@pytest.mark.parametrize("layout", ["four-panel", "single"])
@pytest.mark.parametrize("aspect", [1.0, 1.5, 2 / 3])
def test_fitting_layouts_keep_the_picture_aspect(layout, aspect):
    for plan in plan_pages([aspect] * 6, layout, A4_72DPI):
        for slot in plan.slots:
            assert slot.image.w / slot.image.h == pytest.approx(aspect, abs=0.02)


def test_four_panel_pages_hold_four_in_the_same_grid():
    plans = plan_pages([1.0] * 10, "four-panel", A4_72DPI)
    assert [len(p.slots) for p in plans] == [4, 4, 2]
    first = [s.frame for s in plans[0].slots]
    assert [s.frame for s in plans[2].slots] == first[:2]
    xs, ys = sorted({f.x for f in first}), sorted({f.y for f in first})
    assert len(xs) == 2 and len(ys) == 2  # 2 x 2
    assert [(f.x, f.y) for f in first] == [
        (xs[0], ys[0]),
        (xs[1], ys[0]),
        (xs[0], ys[1]),
        (xs[1], ys[1]),
    ]


def test_single_is_one_panel_per_page():
    plans = plan_pages([1.0, 1.2, 0.8], "single", A4_72DPI)
    assert [[s.index for s in p.slots] for p in plans] == [[0], [1], [2]]


def rows_of(plan: PageLayout) -> list[list[Slot]]:
    by_y: dict[int, list[Slot]] = {}
    for slot in plan.slots:
        by_y.setdefault(slot.frame.y, []).append(slot)
    return [sorted(row, key=lambda s: s.frame.x) for _, row in sorted(by_y.items())]


def test_rows_are_one_to_three_panels_with_mixed_widths():
    plans = plan_pages([1.0] * 40, "rows", A4_72DPI, seed=5)
    widths = set()
    for plan in plans:
        rows = rows_of(plan)
        assert 1 <= len(rows) <= STYLE.rows_per_page
        for row in rows:
            assert 1 <= len(row) <= 3
            widths.add(tuple(s.frame.w for s in row))
    assert any(len(set(w)) > 1 for w in widths)  # some row mixes a wide panel with narrow ones


def test_rows_are_the_same_for_a_seed_and_vary_between_seeds():
    def plan(seed: int) -> list[PageLayout]:
        return plan_pages([1.0] * 12, "rows", A4_72DPI, seed=seed)

    assert plan(3) == plan(3)
    assert any(plan(seed) != plan(3) for seed in range(10))


def test_a_scene_marked_wide_gets_a_wide_panel():
    wide = [False] * 12
    wide[4] = wide[9] = True
    for seed in range(20):
        plans = plan_pages([1.0] * 12, "rows", A4_72DPI, wide=wide, seed=seed)
        for row in (r for plan in plans for r in rows_of(plan)):
            for slot in row:
                if not wide[slot.index]:
                    if len(row) == 1:  # alone and not wide: fitted, not cut to a strip
                        assert slot.image.w / slot.image.h == pytest.approx(1.0, abs=0.02)
                    continue
                others = [s.frame.w for s in row if not wide[s.index]]
                assert all(slot.frame.w > w for w in others)
                if len(row) == 1:  # alone in its row, it spans the row
                    assert slot.frame.w == A4_72DPI[0] - 2 * STYLE.px(STYLE.margin, A4_72DPI)


def test_nothing_to_lay_out_is_no_pages():
    assert all(plan_pages([], layout, A4_72DPI) == [] for layout in LAYOUTS)


def test_bad_requests_are_refused():
    with pytest.raises(InputError, match="unknown comic layout"):
        plan_pages([1.0], "grid", A4_72DPI)  # type: ignore[arg-type]
    crowded = PageStyle(caption_lines=10, font_size=0.05)
    with pytest.raises(InputError, match="no room for pictures"):
        plan_pages([1.0], "rows", (200, 200), style=crowded)
    with pytest.raises(ValueError, match="wide flags"):
        plan_pages([1.0, 1.0], "rows", A4_72DPI, wide=[True])
    with pytest.raises(InputError, match="below"):
        PageStyle(captions="beside")  # type: ignore[arg-type]
