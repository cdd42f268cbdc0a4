#!/usr/bin/env python3
"""Write the verifiable-instruction prompt sets (instructions-*.jsonl) for `--judge instructions`.

Usage (from anywhere; standard library only):

    python3 data/prompts/make_instructions.py
    python3 data/prompts/jsonl_to_parquet.py   # then the Parquet files

Each prompt is a short task written for this project plus one to three constraints, stated in
the prompt's words and listed in its `constraints` column (kinds and arguments:
shared/src/judge/constraints.rs). Tasks are never shared between the evaluation set and the
training sets; each training task appears in two of the three training files, with different
constraints. Constraints are picked so that every kind appears in every file and no two
constraints of a prompt contradict each other. The output is deterministic: the same script
writes the same bytes.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (task, type, topic words that a good answer uses naturally)
# Types: list (enumerations), describe, explain, story, letter, advice, poem.
TRAIN_TASKS = [
    ("Describe a sunrise over the sea.", "describe", ["sun", "sky", "water"]),
    ("Explain why leaves change color in autumn.", "explain", ["leaves", "green", "cold"]),
    ("List some ways to save water at home.", "list", ["water", "shower", "tap"]),
    ("Write a short story about a lost umbrella.", "story", ["umbrella", "rain", "owner"]),
    ("Write a note inviting a neighbor to a garden party.", "letter", ["garden", "party", "food"]),
    ("Give advice to someone starting to learn the guitar.", "advice", ["practice", "chords", "fingers"]),
    ("Write a short poem about a quiet library.", "poem", ["books", "silence", "pages"]),
    ("Describe the smell of fresh bread.", "describe", ["bread", "warm", "oven"]),
    ("Explain how a bicycle stays upright.", "explain", ["wheels", "balance", "speed"]),
    ("List some healthy snacks for a long trip.", "list", ["fruit", "nuts", "water"]),
    ("Write a short story about a robot who learns to cook.", "story", ["robot", "kitchen", "soup"]),
    ("Write a thank-you note to a teacher.", "letter", ["teacher", "class", "thank"]),
    ("Give tips for sleeping better at night.", "advice", ["sleep", "bed", "light"]),
    ("Write a short poem about the first snow of winter.", "poem", ["snow", "white", "cold"]),
    ("Describe a busy market on a Saturday morning.", "describe", ["market", "people", "fruit"]),
    ("Explain what a rainbow is.", "explain", ["light", "rain", "colors"]),
    ("List some games children can play outside.", "list", ["ball", "run", "tag"]),
    ("Write a short story about a cat who wants to fly.", "story", ["cat", "bird", "sky"]),
    ("Write a message asking a friend to return a borrowed book.", "letter", ["book", "friend", "return"]),
    ("Give advice for a first day at a new job.", "advice", ["colleagues", "questions", "time"]),
    ("Write a short poem about a lighthouse.", "poem", ["light", "sea", "night"]),
    ("Describe your ideal reading corner.", "describe", ["chair", "lamp", "books"]),
    ("Explain why we need to drink water.", "explain", ["body", "water", "energy"]),
    ("List some things to pack for a beach day.", "list", ["towel", "sunscreen", "water"]),
    ("Write a short story about two friends building a treehouse.", "story", ["tree", "wood", "friends"]),
    ("Write an email to a landlord about a broken heater.", "letter", ["heater", "apartment", "repair"]),
    ("Give tips for keeping a houseplant alive.", "advice", ["water", "light", "soil"]),
    ("Write a short poem about the moon.", "poem", ["moon", "night", "silver"]),
    ("Describe a thunderstorm from inside a house.", "describe", ["thunder", "window", "rain"]),
    ("Explain how bees make honey.", "explain", ["bees", "flowers", "honey"]),
    ("List some ways to be kind to a stranger.", "list", ["smile", "help", "door"]),
    ("Write a short story about a dragon afraid of the dark.", "story", ["dragon", "dark", "fire"]),
    ("Write a note to a friend wishing them a happy birthday.", "letter", ["birthday", "friend", "year"]),
    ("Give advice to a student preparing for an exam.", "advice", ["study", "notes", "sleep"]),
    ("Write a short poem about an old bridge.", "poem", ["bridge", "river", "stone"]),
    ("Describe a walk through a pine forest.", "describe", ["trees", "path", "birds"]),
    ("Explain why the ocean is salty.", "explain", ["salt", "rivers", "rocks"]),
    ("List some simple ways to reduce plastic waste.", "list", ["bags", "bottles", "reuse"]),
    ("Write a short story about a boy who finds a magic key.", "story", ["key", "door", "magic"]),
    ("Write a short letter to your future self.", "letter", ["future", "hope", "years"]),
    ("Give tips for cooking rice that is not sticky.", "advice", ["rice", "water", "pot"]),
    ("Write a short poem about a busy city at night.", "poem", ["city", "lights", "streets"]),
    ("Describe the taste of a ripe mango.", "describe", ["mango", "sweet", "juice"]),
    ("Explain how a seed grows into a plant.", "explain", ["seed", "roots", "sun"]),
    ("List some hobbies a person can start at home.", "list", ["reading", "drawing", "cooking"]),
    ("Write a short story about a mouse who lives in a piano.", "story", ["mouse", "piano", "music"]),
    ("Write a message to a coworker asking to swap shifts.", "letter", ["shift", "week", "swap"]),
    ("Give advice for running a first five-kilometer race.", "advice", ["pace", "shoes", "training"]),
    ("Write a short poem about a field of sunflowers.", "poem", ["sunflowers", "field", "summer"]),
    ("Describe an old kitchen in a farmhouse.", "describe", ["kitchen", "table", "stove"]),
    ("Explain what causes the seasons.", "explain", ["earth", "sun", "tilt"]),
    ("List some ways to stay warm in winter.", "list", ["coat", "tea", "blanket"]),
    ("Write a short story about a snowman who wants to see summer.", "story", ["snowman", "summer", "sun"]),
    ("Write an invitation to a small book club meeting.", "letter", ["book", "meeting", "club"]),
    ("Give tips for writing a clear email.", "advice", ["subject", "short", "reader"]),
    ("Write a short poem about a river in spring.", "poem", ["river", "spring", "flow"]),
    ("Describe a quiet morning in a small village.", "describe", ["village", "morning", "bells"]),
    ("Explain how a refrigerator keeps food cold.", "explain", ["heat", "food", "cold"]),
    ("List some things that make a good friend.", "list", ["trust", "kindness", "time"]),
    ("Write a short story about a turtle who enters a race.", "story", ["turtle", "race", "finish"]),
    ("Write a note apologizing for missing a meeting.", "letter", ["meeting", "sorry", "time"]),
    ("Give advice for keeping a room tidy.", "advice", ["room", "clothes", "box"]),
    ("Write a short poem about a cup of tea.", "poem", ["tea", "cup", "steam"]),
    ("Describe a carnival at night.", "describe", ["lights", "music", "rides"]),
    ("Explain why cats purr.", "explain", ["cats", "purr", "calm"]),
    ("List some fruits that grow on trees.", "list", ["apple", "orange", "cherry"]),
    ("Write a short story about a kite that escapes.", "story", ["kite", "wind", "string"]),
    ("Write a message welcoming a new member to a team.", "letter", ["team", "welcome", "work"]),
    ("Give tips for saving money on groceries.", "advice", ["list", "prices", "store"]),
    ("Write a short poem about a train journey.", "poem", ["train", "window", "fields"]),
    ("Describe the view from the top of a hill.", "describe", ["hill", "valley", "wind"]),
    ("Explain how the moon changes shape in the sky.", "explain", ["moon", "sun", "light"]),
    ("List some ways to learn new words in a foreign language.", "list", ["words", "cards", "reading"]),
    ("Write a short story about a baker who oversleeps.", "story", ["baker", "bread", "morning"]),
    ("Write a note to a neighbor about a lost dog.", "letter", ["dog", "neighbor", "seen"]),
    ("Give advice for speaking in front of a class.", "advice", ["breathe", "practice", "audience"]),
    ("Write a short poem about autumn leaves.", "poem", ["leaves", "autumn", "wind"]),
    ("Describe a rainy afternoon in a cafe.", "describe", ["cafe", "rain", "coffee"]),
    ("Explain why we see lightning before we hear thunder.", "explain", ["light", "sound", "speed"]),
    ("List some useful things to keep in a kitchen drawer.", "list", ["scissors", "tape", "spoon"]),
    ("Write a short story about a fox and a clever crow.", "story", ["fox", "crow", "cheese"]),
    ("Write a short review of a favorite park.", "letter", ["park", "trees", "visit"]),
    ("Give tips for taking care of a new puppy.", "advice", ["puppy", "food", "walks"]),
    ("Write a short poem about the wind.", "poem", ["wind", "trees", "sky"]),
    ("Describe a lake on a calm summer evening.", "describe", ["lake", "water", "evening"]),
    ("Explain how a compass shows direction.", "explain", ["needle", "north", "magnet"]),
    ("List some ways to relax after a long day.", "list", ["bath", "music", "walk"]),
    ("Write a short story about a girl who talks to the stars.", "story", ["stars", "night", "girl"]),
    ("Write a note asking a friend to water your plants.", "letter", ["plants", "water", "week"]),
    ("Give advice for making new friends in a new town.", "advice", ["club", "people", "town"]),
]

EVAL_TASKS = [
    ("Describe a snowy mountain at dawn.", "describe", ["snow", "mountain", "light"]),
    ("Explain why the sky is dark at night.", "explain", ["sun", "earth", "night"]),
    ("List some ways to start the morning well.", "list", ["breakfast", "water", "plan"]),
    ("Write a short story about a clock that runs backwards.", "story", ["clock", "time", "hands"]),
    ("Write a note thanking a neighbor for their help.", "letter", ["help", "neighbor", "thank"]),
    ("Give tips for learning to swim as an adult.", "advice", ["water", "breathing", "lessons"]),
    ("Write a short poem about the ocean.", "poem", ["waves", "ocean", "shore"]),
    ("Describe a fireplace on a winter evening.", "describe", ["fire", "warm", "wood"]),
    ("Explain how birds know where to migrate.", "explain", ["birds", "sun", "stars"]),
    ("List some things to see in a big museum.", "list", ["paintings", "statues", "history"]),
    ("Write a short story about a shy ghost.", "story", ["ghost", "house", "friend"]),
    ("Write an email asking a store about a late delivery.", "letter", ["order", "delivery", "date"]),
    ("Give advice for planting a small vegetable garden.", "advice", ["soil", "seeds", "sun"]),
    ("Write a short poem about a rainy day.", "poem", ["rain", "clouds", "puddles"]),
    ("Describe a crowded train station.", "describe", ["trains", "people", "platform"]),
    ("Explain why ice floats on water.", "explain", ["ice", "water", "dense"]),
    ("List some good habits for healthy teeth.", "list", ["brush", "floss", "sugar"]),
    ("Write a short story about a penguin who wants to fly.", "story", ["penguin", "ice", "sky"]),
    ("Write a message inviting friends to a picnic.", "letter", ["picnic", "park", "food"]),
    ("Give tips for staying focused while studying.", "advice", ["phone", "breaks", "desk"]),
    ("Write a short poem about a garden at night.", "poem", ["garden", "moon", "flowers"]),
    ("Describe a beach in the middle of winter.", "describe", ["sand", "waves", "wind"]),
    ("Explain how a rainbow forms after rain.", "explain", ["light", "drops", "colors"]),
    ("List some ways to help the environment at school.", "list", ["recycle", "paper", "lights"]),
    ("Write a short story about a squirrel who hides a secret.", "story", ["squirrel", "nut", "tree"]),
    ("Write a note to a friend who is feeling sick.", "letter", ["better", "rest", "soon"]),
    ("Give advice for a long car trip with children.", "advice", ["snacks", "games", "stops"]),
    ("Write a short poem about stars.", "poem", ["stars", "night", "sky"]),
    ("Describe the sounds of a forest at night.", "describe", ["owls", "wind", "leaves"]),
    ("Explain why bread rises.", "explain", ["yeast", "dough", "gas"]),
    ("List some animals that live in the desert.", "list", ["camel", "lizard", "snake"]),
    ("Write a short story about a letter that arrives fifty years late.", "story", ["letter", "years", "mail"]),
    ("Write a short message congratulating a friend on a new job.", "letter", ["job", "congratulations", "proud"]),
    ("Give tips for drinking more water each day.", "advice", ["bottle", "water", "day"]),
    ("Write a short poem about a candle.", "poem", ["flame", "light", "wax"]),
    ("Describe a street after a summer rain.", "describe", ["street", "rain", "air"]),
    ("Explain how a plant drinks water.", "explain", ["roots", "water", "leaves"]),
    ("List some ways to make a small room feel bigger.", "list", ["mirror", "light", "colors"]),
    ("Write a short story about a fisherman and a talking fish.", "story", ["fish", "boat", "sea"]),
    ("Write an invitation to a neighborhood cleanup day.", "letter", ["street", "cleanup", "bags"]),
    ("Give advice for someone learning to cook.", "advice", ["recipes", "knife", "taste"]),
    ("Write a short poem about a mountain lake.", "poem", ["lake", "mountain", "still"]),
    ("Describe a bakery early in the morning.", "describe", ["bread", "oven", "smell"]),
    ("Explain why we have day and night.", "explain", ["earth", "sun", "spins"]),
    ("List some ways to keep a bicycle in good shape.", "list", ["chain", "tires", "brakes"]),
    ("Write a short story about an owl who cannot sleep.", "story", ["owl", "night", "day"]),
    ("Write a note asking a teacher for extra help.", "letter", ["help", "homework", "time"]),
    ("Give tips for packing a suitcase.", "advice", ["clothes", "roll", "shoes"]),
    ("Write a short poem about a summer afternoon.", "poem", ["summer", "heat", "shade"]),
    ("Describe a library on a quiet afternoon.", "describe", ["books", "shelves", "quiet"]),
    ("Explain how a candle burns.", "explain", ["wax", "wick", "flame"]),
    ("List some things that make a home cozy.", "list", ["blankets", "lamps", "plants"]),
    ("Write a short story about a child who plants a tiny tree.", "story", ["tree", "seed", "years"]),
    ("Write a message to a friend about a movie you liked.", "letter", ["movie", "story", "watch"]),
    ("Give advice for taking better photos with a phone.", "advice", ["light", "phone", "photo"]),
    ("Write a short poem about a bird at the window.", "poem", ["bird", "window", "song"]),
    ("Describe a summer festival in a small town.", "describe", ["music", "food", "town"]),
    ("Explain why some animals sleep all winter.", "explain", ["winter", "food", "energy"]),
    ("List some ways to spend a rainy weekend.", "list", ["books", "games", "movies"]),
    ("Write a short story about a violin found in an attic.", "story", ["violin", "attic", "music"]),
    ("Write a note asking to borrow a neighbor's ladder.", "letter", ["ladder", "borrow", "return"]),
    ("Give tips for keeping calm before a job interview.", "advice", ["breathe", "prepare", "questions"]),
    ("Write a short poem about the sea at night.", "poem", ["sea", "moon", "waves"]),
    ("Describe a walk along a river in autumn.", "describe", ["river", "leaves", "path"]),
]

# Words a reply to nearly any of these tasks is tempted to use, for `exclude_keywords`.
FILLERS = ["very", "really", "nice", "good", "thing", "things", "just", "beautiful", "lot"]

LANGUAGES = [("Russian", "cyrillic"), ("Chinese", "han"), ("Hindi", "devanagari"), ("Greek", "greek"),
             ("Arabic", "arabic"), ("Japanese", "japanese")]

END_PHRASES = ["Is there anything else I can help with?", "That is all for today.", "Thank you for reading.",
               "Have a wonderful day."]
START_PHRASES = {
    "story": ["Once upon a time", "Long ago", "It was a quiet evening"],
    "letter": ["Dear friend,", "Hello there,", "Hi,"],
    "default": ["Here is my answer:", "In short,", "Sure,"],
}
POSTSCRIPTS = ["P.S.", "P.P.S"]
LETTERS = ["b", "k", "m", "p", "w", "y", "g", "d"]

# Pairs of kinds that cannot both hold (or make a prompt confusing).
CONFLICTS = {
    frozenset(p)
    for p in [
        ("lowercase", "uppercase"), ("lowercase", "capital_word_count"), ("uppercase", "capital_word_count"),
        ("lowercase", "section_count"),
        ("json_only", "bullet_count"), ("json_only", "highlight_count"), ("json_only", "paragraph_count"),
        ("json_only", "title"), ("json_only", "postscript"), ("json_only", "start_phrase"),
        ("json_only", "end_phrase"), ("json_only", "quoted"), ("json_only", "repeat_request"),
        ("json_only", "section_count"), ("json_only", "sentence_count"), ("json_only", "placeholder_count"),
        ("json_only", "no_commas"), ("json_only", "script"), ("json_only", "uppercase"),
        ("json_only", "capital_word_count"),
        ("quoted", "end_phrase"), ("quoted", "start_phrase"), ("quoted", "repeat_request"),
        ("quoted", "postscript"), ("quoted", "title"), ("quoted", "bullet_count"), ("quoted", "section_count"),
        ("repeat_request", "start_phrase"), ("repeat_request", "word_count"), ("repeat_request", "char_count"),
        ("repeat_request", "title"), ("repeat_request", "section_count"),
        ("paragraph_count", "char_count"), ("paragraph_count", "sentence_count"),
        ("paragraph_count", "bullet_count"), ("paragraph_count", "section_count"),
        ("bullet_count", "sentence_count"), ("section_count", "char_count"), ("section_count", "sentence_count"),
        ("postscript", "end_phrase"), ("char_count", "word_count"), ("char_count", "bullet_count"),
        ("char_count", "title"),
        ("keyword_frequency", "include_keywords"), ("keyword_frequency", "exclude_keywords"),
    ]
}
# A non-Latin script rules out what is checked on English words or Latin letters.
SCRIPT_CONFLICTS = {"include_keywords", "exclude_keywords", "keyword_frequency", "letter_frequency",
                    "lowercase", "uppercase", "capital_word_count", "start_phrase", "end_phrase", "postscript",
                    "section_count", "repeat_request", "title", "placeholder_count"}

ALL_KINDS = [
    "word_count", "sentence_count", "paragraph_count", "char_count", "include_keywords", "exclude_keywords",
    "keyword_frequency", "letter_frequency", "lowercase", "uppercase", "capital_word_count", "no_commas",
    "json_only", "bullet_count", "highlight_count", "placeholder_count", "section_count", "title", "postscript",
    "start_phrase", "end_phrase", "quoted", "script", "repeat_request",
]
# Kinds that only make sense for some task types.
ONLY_FOR = {
    "json_only": {"list"},
    "bullet_count": {"list", "advice"},
    "placeholder_count": {"letter"},
    "section_count": {"explain", "advice", "describe"},
    "paragraph_count": {"story", "explain", "describe", "letter"},
}


def compatible(kind, chosen):
    if any(frozenset((kind, c)) in CONFLICTS for c in chosen):
        return False
    if kind == "script" and chosen & SCRIPT_CONFLICTS or kind in SCRIPT_CONFLICTS and "script" in chosen:
        return False
    return True


def instantiate(kind, task, ttype, words, rng):
    """The constraint object and the sentence that asks for it."""
    if kind == "word_count":
        if rng.random() < 0.6:
            n = rng.choice([25, 30, 40, 50, 60])
            return {"kind": kind, "at_most": n}, rng.choice(
                [f"Use at most {n} words.", f"Keep it to {n} words or fewer.", f"Answer in no more than {n} words."])
        n = rng.choice([40, 50, 60, 80])
        return {"kind": kind, "at_least": n}, f"Write at least {n} words."
    if kind == "sentence_count":
        n = rng.choice([2, 3, 4, 5])
        if rng.random() < 0.5:
            return {"kind": kind, "at_least": n, "at_most": n}, f"Write exactly {n} sentences."
        return {"kind": kind, "at_most": n}, f"Use no more than {n} sentences."
    if kind == "paragraph_count":
        n = rng.choice([2, 3])
        return {"kind": kind, "at_least": n, "at_most": n}, rng.choice(
            [f"Write exactly {n} paragraphs, separated by a blank line.",
             f"Split your answer into {n} paragraphs with a blank line between them."])
    if kind == "char_count":
        n = rng.choice([150, 200, 280])
        return {"kind": kind, "at_most": n}, f"Keep the whole answer to at most {n} characters."
    if kind in ("include_keywords", "exclude_keywords"):
        include = kind == "include_keywords"
        k = rng.sample(words if include else FILLERS, rng.choice([1, 2]))
        the = ("the words " if len(k) > 1 else "the word ") + (" and " if include else " or ").join(
            f'"{w}"' for w in k)
        asks = [f"Include {the}.", f"Make sure to use {the}."] if include else \
            [f"Do not use {the}.", f"Avoid {the}."]
        return {"kind": kind, "keywords": k}, rng.choice(asks)
    if kind == "keyword_frequency":
        w = rng.choice(words)
        if rng.random() < 0.7:
            n = rng.choice([2, 3])
            return {"kind": kind, "keyword": w, "at_least": n}, f'Use the word "{w}" at least {n} times.'
        return {"kind": kind, "keyword": w, "at_most": 1}, f'Use the word "{w}" no more than once.'
    if kind == "letter_frequency":
        letter = rng.choice(LETTERS)
        n = rng.choice([3, 5, 8])
        return {"kind": kind, "letter": letter, "at_least": n}, \
            f'Use the letter "{letter}" at least {n} times.'
    if kind == "lowercase":
        return {"kind": kind}, rng.choice(
            ["Write everything in lowercase letters, with no capital letters at all.",
             "Your whole answer must be in lowercase."])
    if kind == "uppercase":
        return {"kind": kind}, rng.choice(
            ["Write your entire answer in capital letters.", "Answer in all capital letters."])
    if kind == "capital_word_count":
        if rng.random() < 0.6:
            n = rng.choice([2, 3])
            return {"kind": kind, "at_least": n}, \
                f"Use at least {n} words written entirely in capital letters for emphasis."
        n = rng.choice([1, 2])
        return {"kind": kind, "at_most": n}, f"Use at most {n} words written entirely in capital letters."
    if kind == "no_commas":
        return {"kind": kind}, rng.choice(["Do not use any commas.", "Avoid commas entirely."])
    if kind == "json_only":
        return {"kind": kind}, rng.choice(
            ["Answer only with valid JSON and no other text.", "Give your whole answer as JSON, nothing else."])
    if kind == "bullet_count":
        n = rng.choice([3, 4, 5])
        return {"kind": kind, "at_least": n, "at_most": n}, \
            f'Use exactly {n} bullet points, each on its own line starting with "* ".'
    if kind == "highlight_count":
        n = rng.choice([1, 2, 3])
        return {"kind": kind, "at_least": n}, \
            f"Highlight at least {n} part{'s' if n > 1 else ''} with Markdown, like *highlighted text*."
    if kind == "placeholder_count":
        n = rng.choice([1, 2, 3])
        return {"kind": kind, "at_least": n}, \
            f"Include at least {n} placeholder{'s' if n > 1 else ''} in square brackets, such as [name]."
    if kind == "section_count":
        n = rng.choice([2, 3])
        return {"kind": kind, "marker": "SECTION", "at_least": n, "at_most": n}, \
            f"Divide your answer into {n} sections, starting each with SECTION and its number (SECTION 1, SECTION 2)."
    if kind == "title":
        return {"kind": kind}, "Give your answer a title wrapped in double angle brackets, like <<my title>>."
    if kind == "postscript":
        marker = rng.choice(POSTSCRIPTS)
        return {"kind": kind, "marker": marker}, f'At the end, add a postscript starting with "{marker}".'
    if kind == "start_phrase":
        phrase = rng.choice(START_PHRASES.get(ttype, START_PHRASES["default"]))
        return {"kind": kind, "phrase": phrase}, f'Start your answer with "{phrase}".'
    if kind == "end_phrase":
        phrase = rng.choice(END_PHRASES)
        return {"kind": kind, "phrase": phrase}, \
            f'Finish your answer with the exact phrase "{phrase}" and nothing after it.'
    if kind == "quoted":
        return {"kind": kind}, "Wrap your entire answer in double quotation marks."
    if kind == "script":
        language, script = rng.choice(LANGUAGES)
        return {"kind": kind, "script": script}, f"Answer in {language} only, no other language is allowed."
    raise ValueError(kind)


def make_prompt(task, ttype, words, rng, usage):
    n = rng.choices([1, 2, 3], weights=[3, 5, 3])[0]
    chosen, parts = [], []
    for _ in range(n):
        options = [k for k in ALL_KINDS
                   if k not in chosen and ttype in ONLY_FOR.get(k, {ttype}) and compatible(k, set(chosen))]
        # The least used kinds first, so every kind shows up in every file.
        least = min(usage[k] for k in options)
        kind = rng.choice([k for k in options if usage[k] == least])
        usage[kind] += 1
        chosen.append(kind)
    # The request to repeat comes last, and is everything before it.
    chosen.sort(key=lambda k: k == "repeat_request")
    constraints, sentences = [], []
    for kind in chosen:
        if kind == "repeat_request":
            request = " ".join([task] + sentences)
            constraints.append({"kind": kind, "request": request})
            sentences.append("First repeat the request above word for word without change, then give your answer.")
        else:
            c, sentence = instantiate(kind, task, ttype, words, rng)
            constraints.append(c)
            sentences.append(sentence)
    return " ".join([task] + sentences), constraints


def write(name, prefix, tasks, seed):
    rng = random.Random(seed)
    usage = {k: 0 for k in ALL_KINDS}
    rows = []
    for i, (task, ttype, words) in enumerate(tasks, 1):
        prompt, constraints = make_prompt(task, ttype, words, rng, usage)
        rows.append({"prompt_id": f"{prefix}-{i:03d}", "prompt": prompt, "constraints": constraints})
    missing = [k for k, v in usage.items() if v == 0]
    assert not missing, f"{name}: kinds never used: {missing}"
    counts = sorted(usage.items(), key=lambda kv: -kv[1])
    write_jsonl(name, rows, f"{sum(usage.values())} constraints; " +
                ", ".join(f"{k} {v}" for k, v in counts))


def write_one_kind(name, prefix, tasks, kind):
    """Every task with the same single constraint: a dense training signal for that kind."""
    rows = []
    for i, (task, ttype, words) in enumerate(tasks, 1):
        constraint, sentence = instantiate(kind, task, ttype, words, random.Random(i))
        rows.append({"prompt_id": f"{prefix}-{i:03d}", "prompt": f"{task} {sentence}", "constraints": [constraint]})
    write_jsonl(name, rows, f"each with one {kind} constraint")


def write_jsonl(name, rows, summary):
    """`name`.jsonl beside this script, one row per line; prints its size and `summary`."""
    path = HERE / f"{name}.jsonl"
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{path.name}: {len(rows)} prompts, {summary}")


def main():
    train, evaluation = TRAIN_TASKS, EVAL_TASKS
    assert len(train) == 90 and len(evaluation) == 64, (len(train), len(evaluation))
    assert len({t for t, _, _ in train + evaluation}) == len(train) + len(evaluation), "a task repeats"
    # Each training task in two of the three files: thirds A, B, C -> files AB, BC, CA.
    a, b, c = train[:30], train[30:60], train[60:]
    write("instructions-train-1", "it1", a + b, seed=1)
    write("instructions-train-2", "it2", b + c, seed=2)
    write("instructions-train-3", "it3", c + a, seed=3)
    write("instructions-eval", "ie", evaluation, seed=4)
    # One kind only (a <<title>>), for pipelines/smollm2-135m-title.toml: with 24 kinds mixed,
    # an iteration's 60 prompts gave 34 informative pairs for 24 kinds; here every prompt asks
    # for the same one.
    write_one_kind("instructions-title-train-1", "tt", train, "title")
    write_one_kind("instructions-title-eval", "te", evaluation, "title")


if __name__ == "__main__":
    main()
