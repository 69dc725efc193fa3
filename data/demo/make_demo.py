"""Generate data/demo: a small synthetic sentence-pair similarity set in the competition layout.

Written for plaintune (not drawn from any public data set). Each sentence
describes a scene (who, doing what, to what, where); the second sentence of a
pair paraphrases the scene with synonyms and changes some of its parts. The
0-5 label falls with what changed: a paraphrase scores ~5, another place ~4,
another object ~3.4, another action ~2.2, another actor ~3.2, an unrelated
scene ~0.3; a little noise makes it less mechanical.

    python data/demo/make_demo.py      # rewrites the CSVs next to this file
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SUBJECTS = [
    ["a man", "a guy", "a gentleman"],
    ["a woman", "a lady"],
    ["a child", "a kid", "a young child"],
    ["a dog", "a puppy"],
    ["a cat", "a kitten"],
    ["a chef", "a cook"],
    ["a student", "a pupil"],
    ["a doctor", "a physician"],
    ["a girl", "a young girl"],
    ["a boy", "a young boy"],
    ["an old man", "an elderly man"],
    ["a group of people", "a crowd of people"],
    ["a teacher", "an instructor"],
    ["a musician", "a performer"],
]
# action -> (verb forms, objects that fit it; each object with its paraphrases)
ACTIONS = [
    (
        ["is playing", "plays"],
        [
            ["a guitar", "an acoustic guitar"],
            ["the piano", "a piano"],
            ["a violin", "the violin"],
            ["soccer", "football"],
            ["chess", "a game of chess"],
        ],
    ),
    (
        ["is eating", "eats"],
        [
            ["an apple", "a red apple"],
            ["a sandwich", "a sub"],
            ["some soup", "a bowl of soup"],
            ["noodles", "a plate of noodles"],
        ],
    ),
    (["is reading", "reads"], [["a book", "a novel"], ["a newspaper", "the paper"], ["a letter", "a note"]]),
    (["is riding", "rides"], [["a bicycle", "a bike"], ["a horse", "a pony"], ["a motorcycle", "a motorbike"]]),
    (["is cooking", "is preparing"], [["dinner", "an evening meal"], ["rice", "some rice"], ["pasta", "spaghetti"]]),
    (["is painting", "paints"], [["a fence", "the fence"], ["a picture", "a painting"], ["a wall", "the wall"]]),
    (["is writing", "writes"], [["a letter", "a note"], ["an essay", "a paper"], ["a poem", "some verses"]]),
    (["is carrying", "is holding"], [["a bag", "a handbag"], ["a box", "a carton"], ["a basket", "a wicker basket"]]),
]
PLACES = [
    ["in the park", "at the park"],
    ["in the kitchen", "in a kitchen"],
    ["on the street", "on the road"],
    ["on the beach", "by the sea"],
    ["in the office", "at work"],
    ["in the garden", "in the yard"],
    ["at school", "in a classroom"],
    ["at home", "in the house"],
    ["on a bus", "aboard a bus"],
]

# What changing each part of the scene costs on the 0-5 scale.
PENALTY = {"place": 1.0, "object": 1.6, "action": 2.8, "subject": 1.8, "drop_place": 0.4}
CHANGES = [  # (parts changed, weight of this kind of pair)
    ((), 3),
    (("place",), 3),
    (("object",), 3),
    (("action",), 2),
    (("subject",), 2),
    (("subject", "place"), 2),
    (("object", "place"), 2),
    (("subject", "action"), 2),
    (("drop_place",), 2),
    (("unrelated",), 3),
]


def random_scene(rng: random.Random) -> dict:
    action = rng.randrange(len(ACTIONS))
    return {
        "subject": rng.randrange(len(SUBJECTS)),
        "action": action,
        "object": rng.randrange(len(ACTIONS[action][1])),
        "place": rng.randrange(len(PLACES)),
    }


def render(scene: dict, rng: random.Random, with_place: bool = True) -> str:
    verbs, objects = ACTIONS[scene["action"]]
    subject = rng.choice(SUBJECTS[scene["subject"]])
    verb = rng.choice(verbs)
    obj = rng.choice(objects[scene["object"]])
    if not with_place:
        text = f"{subject} {verb} {obj}"
    elif rng.random() < 0.3:
        place = rng.choice(PLACES[scene["place"]])
        text = f"{place}, {subject} {verb} {obj}"
    else:
        text = f"{subject} {verb} {obj} {rng.choice(PLACES[scene['place']])}"
    return text[0].upper() + text[1:] + "."


def other(rng: random.Random, count: int, current: int) -> int:
    return rng.choice([i for i in range(count) if i != current])


def make_pair(rng: random.Random) -> tuple[str, str, float]:
    parts = rng.choices([c for c, _ in CHANGES], weights=[w for _, w in CHANGES])[0]
    first = random_scene(rng)
    if parts == ("unrelated",):
        second = random_scene(rng)
        while second["subject"] == first["subject"] or second["action"] == first["action"]:
            second = random_scene(rng)
        label = rng.uniform(0.0, 0.8)
        return render(first, rng), render(second, rng), label
    second = dict(first)
    for part in parts:
        if part == "subject":
            second["subject"] = other(rng, len(SUBJECTS), first["subject"])
        elif part == "action":
            second["action"] = other(rng, len(ACTIONS), first["action"])
            second["object"] = rng.randrange(len(ACTIONS[second["action"]][1]))
        elif part == "object":
            second["object"] = other(rng, len(ACTIONS[first["action"]][1]), first["object"])
        elif part == "place":
            second["place"] = other(rng, len(PLACES), first["place"])
    label = 5.0 - sum(PENALTY[p] for p in parts) + rng.gauss(0.0, 0.25)
    text_2 = render(second, rng, with_place="drop_place" not in parts)
    pair = [render(first, rng), text_2]
    rng.shuffle(pair)
    return pair[0], pair[1], label


def write(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def main(out: Path = Path(__file__).resolve().parent, seed: int = 2026) -> None:
    rng = random.Random(seed)
    sizes = {"train": 800, "dev": 200, "test": 200}
    for split, size in sizes.items():
        rows = []
        for i in range(size):
            s1, s2, label = make_pair(rng)
            label = round(min(5.0, max(0.0, label)), 1)
            rows.append([f"demo-{split}-{i:04d}", "demo-scenes", s1, s2, label, int(label >= 3.0)])
        if split == "test":
            write(out / "test.csv", ["id", "source", "sentence_1", "sentence_2"], [r[:4] for r in rows])
            write(out / "sample_submission.csv", ["id", "target"], [[r[0], 0.0] for r in rows])
        else:
            write(out / f"{split}.csv", ["id", "source", "sentence_1", "sentence_2", "label", "binary-label"], rows)


if __name__ == "__main__":
    main()
