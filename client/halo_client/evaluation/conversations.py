"""Deterministic long chats with planted facts, for measuring what pruning keeps.

A conversation is a system prompt, user turns that plant facts early (names, numbers, places,
preferences, a short list), distractor turns of several kinds (small talk, lists, code, a
recipe, repeated boilerplate), and questions whose gold answers are the planted facts. The
assistant turns are left empty here: the evaluation has the model itself write them, so that
brightness accumulates from real attention as it does in use.

Everything is a function of the seed: the same seed gives the same conversation, byte for byte.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Split = Literal["tune", "report"]

NAMES = ("Marta", "Ilya", "Priya", "Tomasz", "Aiko", "Kwame", "Lucia", "Oskar", "Nadia", "Rafael",
         "Ingrid", "Mateo", "Yusuf", "Elena", "Bram", "Chiara", "Dmitri", "Amara", "Soren", "Leila")
CITIES = ("Lisbon", "Tbilisi", "Valparaiso", "Kraków", "Nagoya", "Accra", "Tromsø", "Cusco",
          "Ljubljana", "Hobart", "Marrakesh", "Galway", "Quebec", "Bergen", "Mombasa", "Riga")
FRUITS = ("mango", "quince", "lychee", "gooseberry", "persimmon", "apricot", "durian",
          "blackcurrant", "papaya", "fig", "kumquat", "pomegranate")
ITEMS = ("compass", "harmonica", "flashlight", "sketchbook", "thermos", "rope", "kite",
         "telescope", "umbrella", "whistle", "lantern", "notebook", "scarf", "camera")
PETS = ("parrot", "tortoise", "ferret", "beagle", "goldfish", "hedgehog", "rabbit", "iguana")


@dataclass(frozen=True)
class Fact:
    kind: str
    statement: str  # the user's sentence that plants it
    question: str
    answer: str  # the gold string a correct answer contains
    #: how the reply starts before the answer: scoring the answer right after it measures what
    #: the model recalls rather than how it likes to phrase a reply (a 135M model rambles)
    lead: str = ""


@dataclass(frozen=True)
class Turn:
    role: Literal["system", "user", "assistant"]
    text: str
    #: the facts this turn plants (their statements are sentences of `text`)
    facts: tuple[Fact, ...] = ()
    kind: str = ""


@dataclass
class Conversation:
    seed: int
    split: Split
    system: str
    #: user turns; the evaluation inserts the model's reply after each
    turns: list[Turn] = field(default_factory=list)
    facts: list[Fact] = field(default_factory=list)


def _fact(rng: random.Random, kind: str) -> Fact:
    if kind == "name":
        relation = rng.choice(("sister", "landlord", "piano teacher", "best friend", "neighbour"))
        name = rng.choice(NAMES)
        statement = rng.choice((
            f"By the way, my {relation}'s name is {name}.",
            f"I should mention that my {relation} is called {name}.",
            f"You might need this later: my {relation} goes by {name}.",
        ))
        return Fact(kind, statement, f"What is my {relation}'s name?", name, f"Your {relation}'s name is")
    if kind == "number":
        thing = rng.choice(("locker code", "flat number", "bike lock combination", "gym member number"))
        number = str(rng.randint(1000, 9899))
        statement = rng.choice((
            f"My {thing} is {number}.",
            f"Please remember that my {thing} is {number}.",
            f"Note for later: the {thing} I use is {number}.",
        ))
        return Fact(kind, statement, f"What is my {thing}?", number, f"Your {thing} is")
    if kind == "place":
        city = rng.choice(CITIES)
        statement = rng.choice((
            f"I grew up in {city}, near the harbour.",
            f"My childhood was spent in {city}.",
            f"Before moving here I lived in {city} for many years.",
        ))
        return Fact(kind, statement, "In which city did I grow up?", city, "You grew up in")
    if kind == "preference":
        fruit = rng.choice(FRUITS)
        statement = rng.choice((
            f"My favourite fruit is the {fruit}.",
            f"Of all fruits, I like {fruit} best.",
            f"If I could eat one fruit forever, it would be {fruit}.",
        ))
        return Fact(kind, statement, "What is my favourite fruit?", fruit, "Your favourite fruit is the")
    if kind == "pet":
        pet = rng.choice(PETS)
        name = rng.choice(NAMES)
        statement = f"We have a {pet} at home named {name}."
        return Fact(kind, statement, "What kind of animal is our pet?", pet, "Your pet is a")
    items = rng.sample(ITEMS, 3)
    statement = rng.choice((
        f"For the hiking trip I packed a {items[0]}, a {items[1]} and a {items[2]}.",
        f"My bag for the trip holds a {items[0]}, a {items[1]} and a {items[2]}.",
    ))
    return Fact("list", statement, "What was the first thing I packed for the trip?", items[0],
                "The first thing you packed was a")


def _small_talk(rng: random.Random) -> str:
    topic = rng.choice(("the weather", "a film I saw", "my commute", "the weekend", "a podcast"))
    return " ".join(rng.sample([
        f"I have been thinking about {topic} a lot today.",
        "It is strange how quickly the week goes by.",
        "Do you ever feel like time moves faster in winter?",
        "Anyway, that is not really important.",
        "My coffee went cold while I was writing this.",
        "I suppose everyone has days like that.",
        "What do you usually do to relax in the evening?",
    ], k=4))


def _list(rng: random.Random) -> str:
    chores = rng.sample(["water the plants", "pay the electricity bill", "call the plumber",
                         "return the library books", "clean the oven", "buy stamps",
                         "sort the recycling", "book a dentist appointment", "fix the shelf"], k=5)
    lines = "\n".join(f"{i}. {c.capitalize()}." for i, c in enumerate(chores, 1))
    return f"Here is my to-do list for Saturday:\n{lines}\nCan you suggest an order for these?"


def _code(rng: random.Random) -> str:
    name = rng.choice(("total_price", "average_score", "count_words", "clean_rows"))
    return (f"Can you check this function?\n```python\ndef {name}(values):\n    result = 0\n"
            "    for v in values:\n        if v is None:\n            continue\n        result += v\n"
            "    return result\n```\nIs there a simpler way to write it?")


def _recipe(rng: random.Random) -> str:
    dish = rng.choice(("lentil soup", "banana bread", "vegetable curry", "pancakes"))
    return (f"I am making {dish} tonight. The recipe says: mix two cups of flour with one cup of "
            "water. Add a pinch of salt. Stir for five minutes, then let it rest. Heat the pan "
            "until it is very hot. Cook for ten minutes on each side. Does that sound right?")


def _boilerplate(rng: random.Random) -> str:
    return ("Please keep your answers short and friendly. Thank you for your help, as always. "
            "Please keep your answers short and friendly.")


DISTRACTORS: dict[str, Callable[[random.Random], str]] = {
    "small_talk": _small_talk, "list": _list, "code": _code, "recipe": _recipe,
    "boilerplate": _boilerplate,
}
FACT_KINDS = ("name", "number", "place", "preference", "pet", "list")
SYSTEMS = (
    "You are a helpful assistant. Answer briefly.",
    "You are a friendly assistant who remembers what the user says. Keep replies short.",
)


def make_conversation(
    seed: int,
    *,
    count_tokens: Callable[[str], int],
    min_tokens: int = 1000,
    max_tokens: int = 4000,
    n_facts: int = 4,
    reply_tokens: int = 40,
) -> Conversation:
    """One conversation; its user text (plus `reply_tokens` per reply) lands in
    [min_tokens, max_tokens]. Facts come in the first third, distractors after."""
    rng = random.Random(seed)
    target = rng.randint(min_tokens, max_tokens)
    split: Split = "tune" if seed % 3 == 0 else "report"
    conv = Conversation(seed=seed, split=split, system=rng.choice(SYSTEMS))
    kinds = rng.sample(FACT_KINDS, n_facts)
    facts = [_fact(rng, k) for k in kinds]
    conv.facts = facts
    total = count_tokens(conv.system)
    openers = ("Hi! I want to tell you a few things about myself.", "Hello again.",
               "Something else about me.", "One more thing.")
    for i, fact in enumerate(facts):
        filler = rng.choice(("I hope that is useful.", "Just so you know.", "Thanks for listening."))
        text = f"{openers[min(i, len(openers) - 1)]} {fact.statement} {filler}"
        conv.turns.append(Turn("user", text, (fact,), "fact"))
        total += count_tokens(text) + reply_tokens
        if rng.random() < 0.5:  # a distractor between facts, so they are not one block
            kind = rng.choice(list(DISTRACTORS))
            text = DISTRACTORS[kind](rng)
            conv.turns.append(Turn("user", text, (), kind))
            total += count_tokens(text) + reply_tokens
    while total < target:
        kind = rng.choice(list(DISTRACTORS))
        text = DISTRACTORS[kind](rng)
        cost = count_tokens(text) + reply_tokens
        if total + cost > max_tokens:
            break
        conv.turns.append(Turn("user", text, (), kind))
        total += cost
    return conv


def make_conversations(
    count: int, *, seed: int = 0, count_tokens: Callable[[str], int], **kw: int
) -> list[Conversation]:
    return [make_conversation(seed * 100_003 + i, count_tokens=count_tokens, **kw) for i in range(count)]
