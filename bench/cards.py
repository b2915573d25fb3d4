"""``python -m bench.cards [--quick]``: card-number detection and redaction, measured.

Prints (asserts nothing):

* detection in text: recall on generated numbers of every network in every written form, and
  how often random numbers that are not card numbers are taken for one (random 16-digit
  numbers, which pass Luhn one time in ten; order numbers; phone numbers);
* detection in images: recall and false positives of OCR on the generated corpus (fonts,
  sizes, turns, backgrounds, JPEG), and after redaction whether OCR still finds a number;
* cost: the time and CPU (Tesseract's, as a child process, plus this process's) to search and
  redact a 1 MP screenshot and a 12 MP photo with ``card_numbers: redact``, against ``allow``
  (which reads nothing). The check runs before the offer card is posted, so this is what the
  policy adds to an offer's latency.
"""

from __future__ import annotations

import argparse
import io
import random
import resource
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter
from stdnum import luhn

from bot.attachments import ocr, redact
from bot.attachments.cards import NETWORKS, find_card_numbers
from bot.attachments.sealed import Sealer
from tests import cardcorpus

FORMS = ("{0}", "{4}", "{-}", "{4s}")


def _number(network_index: int, rng: random.Random) -> str:
    network = NETWORKS[network_index]
    low, high = rng.choice(network.prefixes)
    prefix = str(rng.randint(low, high))
    length = rng.choice(sorted(network.lengths))
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    return body + luhn.calc_check_digit(body)


def _written(digits: str, form: str) -> str:
    if form == "{0}":
        return digits
    if len(digits) == 15:  # American Express prints 4-6-5, Diners 14 as 4-6-4
        groups = [digits[:4], digits[4:10], digits[10:]]
    elif len(digits) == 14:
        groups = [digits[:4], digits[4:10], digits[10:]]
    else:  # groups of four, a remainder under three digits joined to the last group
        groups = [digits[i:i + 4] for i in range(0, len(digits), 4)]
        if len(groups[-1]) < 3:
            groups[-2:] = [groups[-2] + groups[-1]]
    if form == "{4}":
        return " ".join(groups)
    if form == "{-}":
        return "-".join(groups)
    return "  ".join(groups)


def text_detection(count: int, rng: random.Random) -> None:
    """Recall on generated card numbers; false positives on random look-alikes."""
    print("## Detection in text")
    found = total = 0
    for index in range(len(NETWORKS)):
        hits = 0
        for _ in range(count):
            digits = _number(index, rng)
            form = rng.choice(FORMS)
            text = f"Hello, my card is {_written(digits, form)} thanks"
            findings = find_card_numbers(text)
            hits += bool(findings) and findings[0].last4 == digits[-4:]
        print(f"  {NETWORKS[index].name:<18} recall {hits}/{count}")
        found += hits
        total += count
    print(f"  all networks        recall {found}/{total} ({100 * found / total:.1f} %)")
    randoms = [str(rng.randint(10**15, 10**16 - 1)) for _ in range(count * 20)]
    taken = sum(bool(find_card_numbers(f"ref {number}")) for number in randoms)
    print(f"  random 16-digit numbers taken for card numbers: {taken}/{len(randoms)} "
          f"({100 * taken / len(randoms):.2f} %; they pass Luhn 1 time in 10)")
    orders = [str(rng.randint(10**12, 10**13 - 1)) for _ in range(count * 20)]
    taken = sum(bool(find_card_numbers(f"order {number}")) for number in orders)
    print(f"  random 13-digit order numbers taken: {taken}/{len(orders)} "
          f"({100 * taken / len(orders):.2f} %)")
    phones = [f"+{rng.randint(1, 99)} {rng.randint(100, 999)} {rng.randint(1000, 9999)} "
              f"{rng.randint(1000, 9999)}" for _ in range(count * 20)]
    taken = sum(bool(find_card_numbers(f"call {phone}")) for phone in phones)
    print(f"  random international phone numbers taken: {taken}/{len(phones)}")


def image_detection(per_line: int) -> None:
    """OCR recall and false positives on the generated image corpus, and after redaction."""
    print("## Detection in images (OCR)")
    hits = misses = false = leaks = 0
    started = time.monotonic()
    samples = cardcorpus.image_corpus(per_line)
    for sample in samples:
        with Image.open(io.BytesIO(sample.data)) as image:
            image.load()
            words, findings = ocr.find_in_image(image, time.monotonic() + 60)
        if sample.number is None:
            false += bool(findings)
            continue
        if not findings:
            misses += 1
            continue
        hits += 1
        redacted, _ = redact.redact_image(io.BytesIO(sample.data), sample.mimetype, True, 60)
        assert redacted is not None
        with Image.open(io.BytesIO(redacted)) as image:
            image.load()
            _, again = ocr.find_in_image(image, time.monotonic() + 60)
        leaks += bool(again)
    cards = hits + misses
    print(f"  {len(samples)} images ({cards} with a number, {len(samples) - cards} look-alikes)"
          f" in {time.monotonic() - started:.1f} s")
    print(f"  recall {hits}/{cards} ({100 * hits / max(cards, 1):.1f} %), false positives "
          f"{false}/{len(samples) - cards}, numbers OCR still finds after redaction {leaks}")


def _photo(width: int, height: int, seed: int) -> bytes:
    """A noisy, photo-like JPEG with a sticky note holding a card number."""
    rng = random.Random(seed)
    base = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    noise = Image.effect_noise((width, height), 40).convert("RGB")
    image = Image.blend(base, noise, 0.35).filter(ImageFilter.GaussianBlur(1))
    note = cardcorpus.render(["Router model X200", "Card 4111 1111 1111 1111", "PIN on back"],
                             (cardcorpus.fonts() or [None])[0], max(28, height // 40),
                             angle=2.0, background=(255, 240, 150))
    image.paste(note, (rng.randint(0, width - note.width), rng.randint(0, height - note.height)))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=88)
    return out.getvalue()


def _screenshot(width: int, height: int) -> bytes:
    """A 1 MP screenshot-like PNG: a window of text lines, one with a card number."""
    image = Image.new("RGB", (width, height), (246, 247, 249))
    draw = ImageDraw.Draw(image)
    face = cardcorpus.font((cardcorpus.fonts() or [None])[0], 18)
    lines = ["Order history", "Invoice INV-2024-000123-4567", "Shipped with tracking "
             "9400 1000 0000 0000 0000 02", "Paid with card 5555 5555 5555 4444", "Total 42.00 EUR",
             "IBAN DE89 3704 0044 0532 0130 00"]
    for index, line in enumerate(lines * 4):
        draw.text((40, 30 + index * 30), line, fill=(30, 30, 30), font=face)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def cost(repeat: int) -> None:
    """Time and CPU to search and redact a screenshot and a photo (redact vs allow)."""
    print("## Cost per file (card_numbers: redact; allow reads nothing and costs ~0)")
    cases = [("1 MP screenshot (PNG 1280×800)", _screenshot(1280, 800), "image/png", 1.0),
             ("12 MP photo (JPEG 4000×3000)", _photo(4000, 3000, 1), "image/jpeg", 12.0)]
    with tempfile.TemporaryDirectory() as folder:
        for name, data, mimetype, megapixels in cases:
            sealer = Sealer()
            path = Path(folder) / "offer"
            path.write_bytes(sealer.update(data))
            key = sealer.key()
            walls, cpus, found = [], [], 0
            for _ in range(repeat):
                before_self = resource.getrusage(resource.RUSAGE_SELF)
                before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.monotonic()
                check = redact.check_sealed(path, key, mimetype, redact=True, timeout=120)
                walls.append(time.monotonic() - started)
                after_self = resource.getrusage(resource.RUSAGE_SELF)
                after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpus.append(sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in (
                    (after_self, before_self), (after_children, before_children))))
                found = check.found
                if check.copy is not None:
                    check.copy.path.unlink(missing_ok=True)
            wall, cpu = sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2]
            print(f"  {name}: {wall:.2f} s added to the offer (median of {repeat}), CPU "
                  f"{cpu:.2f} s = {cpu / megapixels:.2f} s per megapixel; numbers found {found}")
    print("  (one OCR per core at a time: on N cores, N files are read at once)")


def text_cost() -> None:
    """Time to search a 10 MB CSV: ordinary rows, and rows dense with long look-alikes."""
    print("## Cost of text files (10 MB CSV, searched line by line)")
    rows = {
        "ordinary rows (dates, amounts, addresses)":
            b"2026-12-01,Order 123456,12.50,EUR,Alice Example,Some street 12,10115 Berlin\n",
        "every row an IBAN and a tracking number":
            b"2026-12-01,12.50,IBAN DE89 3704 0044 0532 0130 00,9400 1000 0000 0000 0000 02\n",
    }
    for name, row in rows.items():
        data = row * (10_000_000 // len(row))
        started = time.monotonic()
        found = redact.redact_text(io.BytesIO(data), io.BytesIO().write)
        print(f"  {name}: {time.monotonic() - started:.2f} s ({found} numbers)")


def main() -> None:
    """Run the card-number measurements and print them."""
    parser = argparse.ArgumentParser(prog="python -m bench.cards",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller corpus, fewer repeats")
    args = parser.parse_args()
    rng = random.Random(21)
    text_detection(200 if args.quick else 2000, rng)
    image_detection(2 if args.quick else 6)
    cost(1 if args.quick else 3)
    text_cost()


if __name__ == "__main__":
    main()
