"""Calibrate the emulator's ``l20`` profile against the published single-L20 CosyVoice2 streaming figures.

Starts the embedded server with the ``l20`` profile, sends 26 built-in prompts (about 6.5 s of audio each,
Chinese and English mixed, about 170 s in all, like the published benchmark) with the lean client at
concurrency 1, 2 and 4, and prints first-chunk avg/p50 and RTF (run wall time / audio seconds) beside the
published figures, as ratios. Exit status 1 when a first-chunk average is off by more than the tolerance.

    python -m benchmarks.calibrate_l20                       # the preset as it is
    python -m benchmarks.calibrate_l20 --set vocoder_per_token_s=0.0035 --repeat 2
    python -m benchmarks.calibrate_l20 --pipeline            # the five-model emulator, profile l20_pipeline

``--pipeline`` runs the pipeline emulator (cosyvoice2 calling its sub-models) and measures twice: zero-shot
requests carrying the built-in 3 s prompt (the published figures without the speaker cache: audio_tokenizer and
speaker_embedding run) and target_text only (the spk2info-cache figures), each table beside its published one,
within +-15%. Timings on a small shared machine are noisy (the BLS hops cost CPU): repeat before you trust one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from benchmarks.lean_client import emulated_server, run_load

# Published: single NVIDIA L20, CosyVoice2-0.5B, streaming, 26 prompts, ~170 s of audio (docs/protocol.md).
PUBLISHED = {
    1: {"first_avg_ms": 220.0, "first_p50_ms": 218.0, "rtf": 0.124},
    2: {"first_avg_ms": 477.0, "first_p50_ms": 369.0, "rtf": 0.102},
    4: {"first_avg_ms": 1107.0, "first_p50_ms": 1244.0, "rtf": 0.092},
}
# The same server with the spk2info cache (requests send target_text only); no RTF was published for it.
PUBLISHED_SPK_CACHE = {
    1: {"first_avg_ms": 190.0, "first_p50_ms": 185.0},
    2: {"first_avg_ms": 323.0, "first_p50_ms": 317.0},
    4: {"first_avg_ms": 978.0, "first_p50_ms": 904.0},
}
TOLERANCE = 0.25
PIPELINE_TOLERANCE = 0.15

# 26 prompts of about 6.5 s of speech each (the emulator's text-length model), alternating Chinese and English.
PROMPTS = (
    "今天早上我去市场买了新鲜的蔬菜和水果，回家做了一顿丰盛的早餐。",
    "The train to the coast leaves at nine, so we should pack our bags and books tonight.",
    "这座城市的夜景非常美丽，很多游客都喜欢晚上在河边散步拍照。",
    "She opened the old wooden box slowly and found the letters her grandmother had written.",
    "我们公司明年计划在南方开设三家新的分店，并且招聘更多员工。",
    "Please remember to water the plants on the balcony while I am away for the next week.",
    "小明每天放学以后都会去图书馆看书，一直待到晚上七点才回家。",
    "The city museum will host a special exhibition of ancient maps starting early this spring.",
    "天气预报说明天会有大雨，出门的时候记得带上雨伞和外套。",
    "Our small team finally solved the problem after working on it for three very long days.",
    "这家餐厅的招牌菜是红烧肉，味道非常好，价格也很实惠。",
    "He likes to read the morning newspaper with a cup of hot coffee every single Sunday.",
    "科学家们发现了一种新的方法，可以更快地检测水中的污染物。",
    "The children built a small sandcastle near the water, then sat and watched the waves roll in.",
    "为了保持身体健康，医生建议大家每天至少走路半个小时左右。",
    "If the weather stays clear tonight, we can see all the bright stars from the top of the hill.",
    "我的好朋友下个月要结婚了，我们正在商量送什么礼物比较好。",
    "The new library downtown has quiet rooms where students can study all day, even on weekends.",
    "这本小说讲述了一个年轻人离开家乡，去大城市追求梦想的故事。",
    "Fresh bread from the little bakery on the corner always sells out before eight in the morning.",
    "周末我们全家一起去爬山，山顶的风景让每个人都觉得很开心。",
    "The engineer checked every single cable twice, and only then turned the power back on.",
    "这个软件更新以后，运行速度比以前快了很多，使用起来也更加稳定。",
    "My neighbor plays the piano every evening, and the soft music drifts through the hall.",
    "春节期间，火车站里挤满了回家过年的人，大家都显得非常兴奋。",
    "After the long meeting, everyone agreed to continue the discussion early tomorrow morning.",
)


def audio_seconds(texts: Sequence[str]) -> float:
    """Seconds of audio the emulator produces for ``texts`` (its text-length model, tokens rounded)."""
    from cvload.emulator.single_model import TOKENS_PER_S, speech_tokens

    return sum(speech_tokens(t) for t in texts) / TOKENS_PER_S


def builtin_prompt() -> tuple[object, str]:
    """cvload's first built-in prompt (16 kHz, about 3 s) and its transcript, for zero-shot requests."""
    from cvload.settings.inputs import load_items

    item = next(i for i in load_items(None) if i.prompt_wav is not None)
    return item.prompt_wav, item.prompt_text or ""


async def measure(url: str, concurrencies: Sequence[int], repeat: int, prompt: tuple[object, str] | None = None,
                  ) -> dict[int, list[dict[str, float]]]:
    out: dict[int, list[dict[str, float]]] = {}
    for c in concurrencies:
        for _ in range(repeat):
            run = await run_load(url, PROMPTS, concurrency=c, stagger_s=0.0, prompt=prompt)  # type: ignore[arg-type]
            if run.errors:
                raise SystemExit(f"concurrency {c}: {len(run.errors)} failed requests: {run.errors[0].error}")
            first = run.summary()["first_chunk_ms"]
            out.setdefault(c, []).append(
                {"first_avg_ms": first["avg"], "first_p50_ms": first["p50"], "rtf": run.rtf,  # type: ignore[index]
                 "audio_s": run.audio_s, "wall_s": run.wall_s}
            )
    return out


def report(results: dict[int, list[dict[str, float]]], published: dict[int, dict[str, float]] = PUBLISHED,
           tolerance: float = TOLERANCE) -> tuple[str, bool]:
    lines = [
        f"{'conc':>4}  {'first avg ms':>22}  {'first p50 ms':>22}  {'RTF':>20}",
        f"{'':>4}  {'emulator / L20 = ratio':>22}  {'emulator / L20 = ratio':>22}  {'emulator / L20 = ratio':>20}",
    ]
    ok = True
    for c, runs in results.items():
        ref = published[c]
        cells = []
        for key, fmt in (("first_avg_ms", "{:.0f}"), ("first_p50_ms", "{:.0f}"), ("rtf", "{:.3f}")):
            value = sum(r[key] for r in runs) / len(runs)
            if key not in ref:
                cells.append(f"{fmt.format(value)} / - = -")
                continue
            ratio = value / ref[key]
            if key == "first_avg_ms" and abs(ratio - 1) > tolerance:
                ok = False
            cells.append(f"{fmt.format(value)} / {fmt.format(ref[key])} = {ratio:.2f}")
        lines.append(f"{c:>4}  {cells[0]:>22}  {cells[1]:>22}  {cells[2]:>20}")
    return "\n".join(lines), ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calibrate_l20", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, help="emulator profile (default l20, l20_pipeline with --pipeline)")
    parser.add_argument("--pipeline", action="store_true",
                        help="the five-model pipeline emulator; measures without and with the speaker cache")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="profile override")
    parser.add_argument("--concurrency", type=int, nargs="+", default=sorted(PUBLISHED))
    parser.add_argument("--repeat", type=int, default=1, help="runs per concurrency (averaged)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.set)
    profile = args.profile or ("l20_pipeline" if args.pipeline else "l20")
    print(f"{len(PROMPTS)} prompts, {audio_seconds(PROMPTS):.1f} s of audio; profile {profile} {overrides or ''}"
          + (" (pipeline)" if args.pipeline else ""), flush=True)
    if not args.pipeline:
        with emulated_server(profile, overrides=overrides) as server:
            results = asyncio.run(measure(server.grpc_url, args.concurrency, args.repeat))
        table, ok = report(results)
        if args.json:
            print(json.dumps({str(c): runs for c, runs in results.items()}, indent=1))
        print(table)
        print(f"first-chunk averages {'within' if ok else 'OUTSIDE'} +-{TOLERANCE:.0%} of the published figures")
        return 0 if ok else 1
    ok = True
    with emulated_server(profile, overrides=overrides, pipeline=True) as server:
        for title, prompt, published in (("without the speaker cache (zero-shot: prompt audio + text)",
                                          builtin_prompt(), PUBLISHED),
                                         ("with the speaker cache (--spk-cache: target_text only)", None,
                                          PUBLISHED_SPK_CACHE)):
            results = asyncio.run(measure(server.grpc_url, args.concurrency, args.repeat, prompt))
            table, within = report(results, published, PIPELINE_TOLERANCE)
            ok = ok and within
            if args.json:
                print(json.dumps({str(c): runs for c, runs in results.items()}, indent=1))
            print(f"\n{title}\n{table}", flush=True)
    print(f"\nfirst-chunk averages {'within' if ok else 'OUTSIDE'} +-{PIPELINE_TOLERANCE:.0%} of the published "
          "figures (a shared 2-core machine adds noise: repeat before trusting one run)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
