"""Conversations for the pruning benchmark: planted facts, distractors, and later messages.

A conversation is a system prompt, a history of user messages (the model writes every reply)
and a *tail*: the messages that come after the history, one at a time, with the pruner running
before each as in a live chat. A tail step is either

- a **fidelity** probe: an ordinary next message; the full-context model's reply to it is the
  reference every pruned context is measured against, or
- a **question** about a fact planted early in the history, answered after a lead-in ("Your
  locker code is"): did the pruned context keep what the answer needs?

The facts are designed so that SmolLM2-135M-Instruct can answer them with the full context
(docs/pruning.md reports the rate): each fact kind states a key and an arbitrary value (a name,
a number, a made-up place), the question names the key, and the lead-in repeats it, so the
model has to copy the value from where it was planted. Kinds whose values the model guesses
from its priors (colours, fruit, streets: "the 12th Street") were dropped for that reason.
The values are drawn from pools large enough that guessing rarely hits.

Everything is a function of the seed: the same seed gives the same conversation, byte for byte.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

Split = Literal["tune", "report"]
StepKind = Literal["fidelity", "question"]
Wording = Literal["literal", "paraphrased", ""]
Role = Literal["user", "assistant"]

NAMES = ("Marta", "Ilya", "Priya", "Tomasz", "Aiko", "Kwame", "Lucia", "Oskar", "Nadia", "Rafael",
         "Ingrid", "Mateo", "Yusuf", "Elena", "Bram", "Chiara", "Dmitri", "Amara", "Soren", "Leila")
PETS = ("Biscuit", "Pepper", "Noodle", "Waffles", "Ziggy", "Pickles", "Bramble", "Muffin", "Gizmo", "Tofu")
BOATS = ("Seagull", "Albatross", "Kestrel", "Nautilus", "Marigold", "Osprey")
PROJECTS = ("Falcon", "Quartz", "Bluebird", "Tundra", "Meridian", "Cobalt")
RESTAURANTS = ("Osteria Fiore", "Blue Lantern", "Casa Verde", "Golden Carp", "Little Saigon", "Red Fox Inn")
BAKERIES = ("Golden Crust", "Sweet Pea", "Flour Tower", "Honey Loaf", "Rye Corner", "Sugar Mill")
VILLAGES = ("Little Wickham", "Ashby Hollow", "Nether Stowe", "Kirkby Dale", "Elmsworth", "Brackenfield")
OPENERS = ("By the way, {}.", "I should mention that {}.", "Oh, and {}.", "Just so you know, {}.",
           "Please remember that {}.", "{}.")
FILLERS = ("I hope that is useful.", "Just so you know.", "Thanks for listening.", "")


@dataclass(frozen=True)
class Fact:
    kind: str
    #: the sentence that plants it (in a user message); empty for a user's own conversation,
    #: where the gold policy looks for the answer itself
    statement: str
    question: str
    #: the gold string a correct answer contains
    answer: str
    #: how the reply starts before the answer: scoring what follows measures what the model
    #: recalls rather than how it likes to phrase a reply
    lead: str = ""
    #: passages of the conversation that hold what the answer needs (a user's own conversations;
    #: the gold policy keeps the sentences inside them)
    evidence: tuple[str, ...] = ()
    #: the same question and lead in other words: no content word of the statement (`PARAPHRASES`)
    paraphrase: tuple[str, str] = ("", "")
    #: how the question is worded against the fact: "literal" (it shares a content word with the
    #: statement), "paraphrased" (none, after stemming and without stop words), "" (unknown)
    wording: Wording = ""

    def paraphrased(self) -> Fact:
        """This fact asked in other words."""
        question, lead = self.paraphrase
        if not question:
            raise ValueError(f"the fact {self.statement!r} has no paraphrase")
        return dataclasses.replace(self, question=question, lead=lead, wording="paraphrased")


@dataclass(frozen=True)
class Step:
    """A message after the history."""

    kind: StepKind
    text: str
    fact: Fact | None = None


@dataclass(frozen=True)
class Message:
    role: Role
    #: None: the model writes it (assistant messages only)
    content: str | None


@dataclass
class Conversation:
    name: str
    split: Split
    system: str
    #: the history after the system prompt
    messages: list[Message] = field(default_factory=list)
    tail: list[Step] = field(default_factory=list)
    #: what the history plants (the gold policy keeps the sentences that hold them)
    facts: list[Fact] = field(default_factory=list)

    @property
    def questions(self) -> list[Step]:
        return [s for s in self.tail if s.kind == "question"]


#: every fact's question and lead in other words, by the key the statement names: what people ask
#: days later, sharing no content word with the statement (tests/evaluation checks it, stemmed,
#: against every opener); the lead avoids them too, so the answer is not cued by the fact's words
PARAPHRASES: dict[str, tuple[str, str]] = {
    "locker code": ("Which digits open the cabinet where I leave my sports bag?", "The digits that open it are"),
    "door code": ("What do I type on the keypad to get into my flat?", "You type"),
    "safe code": ("Which digits unlock the strongbox where I keep my passport?", "The digits are"),
    "bike lock code": ("What combination frees my bicycle?", "The combination is"),
    "landlord": ("Who owns the flat I rent?", "The flat belongs to"),
    "sister": ("What is my female sibling called?", "She is called"),
    "neighbour": ("Who lives next door to me?", "The person next door is"),
    "boss": ("Who do I report to at work?", "You report to"),
    "piano teacher": ("Who gives me my weekly keyboard lessons?", "Your lessons are with"),
    "cousin": ("What is my aunt's son called?", "He is called"),
    "dog": ("What do I shout when my puppy runs off in the park?", "You shout"),
    "cat": ("What do I call out when the kitten should come in for dinner?", "You call out"),
    "parrot": ("How do I address the talking bird at home?", "The bird answers to"),
    "tortoise": ("What do I call the slow reptile in my garden?", "You call it"),
    "boat": ("What did I christen the little vessel I sail at weekends?", "You christened it the"),
    "room": ("Which door is mine at the inn where I am staying?", "Your door at the inn is"),
    "project": ("What do we secretly call the thing my team is building at work?", "Your team secretly calls it"),
    "restaurant": ("Where are we eating at the end of the week?", "You are eating at"),
    "membership": ("What digits are printed on the card that lets me into the fitness centre?",
                   "The digits on that card are"),
    "bakery": ("Where do I buy bread close to work?", "You buy bread at"),
    "village": ("Where is my granny's home?", "Your granny's home is in"),
}


def _fact(rng: random.Random, kind: str, used: set[str]) -> Fact:
    fact = _literal_fact(rng, kind, used)
    key = next((k for k in PARAPHRASES if f"my {k}" in fact.statement), kind)
    return dataclasses.replace(fact, paraphrase=PARAPHRASES[key], wording="literal")


def _literal_fact(rng: random.Random, kind: str, used: set[str]) -> Fact:
    def pick(pool: Sequence[str]) -> str:
        value = rng.choice([v for v in pool if v not in used])
        used.add(value)
        return value

    if kind == "code":
        key = rng.choice(("locker code", "door code", "safe code", "bike lock code"))
        value = str(rng.randint(1000, 9899))
        return Fact(kind, f"my {key} is {value}", f"What is my {key}?", value, f"Your {key} is")
    if kind == "name":
        relation = rng.choice(("landlord", "sister", "neighbour", "boss", "piano teacher", "cousin"))
        value = pick(NAMES)
        return Fact(kind, f"my {relation}'s name is {value}", f"What is my {relation}'s name?", value,
                    f"Your {relation}'s name is")
    if kind == "pet":
        animal = rng.choice(("dog", "cat", "parrot", "tortoise"))
        value = pick(PETS)
        return Fact(kind, f"my {animal}'s name is {value}", f"What is my {animal}'s name?", value,
                    f"Your {animal}'s name is")
    if kind == "boat":
        value = pick(BOATS)
        return Fact(kind, f"my boat is called the {value}", "What is my boat called?", value,
                    "Your boat is called the")
    if kind == "room":
        value = str(rng.randint(100, 989))
        return Fact(kind, f"my hotel room number is {value}", "What is my hotel room number?", value,
                    "Your hotel room number is")
    if kind == "project":
        value = pick(PROJECTS)
        return Fact(kind, f"my project's code name is {value}", "What is my project's code name?", value,
                    "Your project's code name is")
    if kind == "restaurant":
        value = pick(RESTAURANTS)
        return Fact(kind, f"the restaurant I booked for Friday is called {value}",
                    "What is the restaurant I booked called?", value, "The restaurant you booked is called")
    if kind == "membership":
        value = str(rng.randint(10000, 98999))
        return Fact(kind, f"my gym membership number is {value}", "What is my gym membership number?", value,
                    "Your gym membership number is")
    if kind == "bakery":
        value = pick(BAKERIES)
        return Fact(kind, f"the bakery near my office is called {value}", "What is the bakery near my office called?",
                    value, "The bakery near your office is called")
    if kind == "village":
        value = pick(VILLAGES)
        return Fact(kind, f"my grandmother lives in a village called {value}",
                    "What is the village my grandmother lives in called?", value,
                    "The village your grandmother lives in is called")
    raise ValueError(f"unknown fact kind {kind!r}")


FACT_KINDS = ("code", "name", "pet", "boat", "room", "project", "restaurant", "membership", "bakery", "village")


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


def _todo_list(rng: random.Random) -> str:
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


def _advice(rng: random.Random) -> str:
    thing = rng.choice(("learn to cook", "sleep better", "start running", "save money", "read more books"))
    return f"I want to {thing}. What would you suggest as a first step? Please give me two ideas."


def _boilerplate(rng: random.Random) -> str:
    return ("Please keep your answers short and friendly. Thank you for your help, as always. "
            "Please keep your answers short and friendly.")


DISTRACTORS: dict[str, Callable[[random.Random], str]] = {
    "small_talk": _small_talk, "list": _todo_list, "code": _code, "recipe": _recipe, "advice": _advice,
    "boilerplate": _boilerplate,
}
SYSTEMS = (
    "You are a helpful assistant. Answer briefly.",
    "You are a friendly assistant who remembers what the user says. Keep replies short.",
)
#: the later messages: fidelity probes (F) between questions asked in the fact's words (Q) and in
#: other words (P), each wording once before and once after the second probe
TAIL = "FQPFPQ"
#: tokens a message's chat template adds around it (SmolLM2's ChatML: about 5 per message)
TEMPLATE_ALLOWANCE = 10


def make_conversation(
    seed: int,
    *,
    count_tokens: Callable[[str], int],
    split: Split = "report",
    min_tokens: int = 600,
    max_tokens: int = 1200,
    n_facts: int = 4,
    reply_tokens: int = 32,
    tail: str = TAIL,
) -> Conversation:
    """One conversation. The history (with `reply_tokens` per reply) lands in
    [min_tokens, max_tokens]; facts come first, 0-2 distractors after each, then distractors.
    `tail`: one letter per later message, F a fidelity probe, Q a question in the fact's own
    words, P the same in other words (one question per fact, in a random order; at most
    `n_facts`)."""
    if tail.count("Q") + tail.count("P") > n_facts or set(tail) - {"F", "Q", "P"}:
        raise ValueError(f"tail {tail!r}: F, Q and P only, at most {n_facts} questions")
    rng = random.Random(seed)
    target = rng.randint(min_tokens, max_tokens)
    conv = Conversation(name=f"seed {seed}", split=split, system=rng.choice(SYSTEMS))
    used: set[str] = set()
    for kind in rng.sample(FACT_KINDS, n_facts):
        fact = _fact(rng, kind, used)
        statement = rng.choice(OPENERS).format(fact.statement)
        conv.facts.append(dataclasses.replace(fact, statement=statement[0].upper() + statement[1:]))

    def distractor() -> str:
        return DISTRACTORS[rng.choice(list(DISTRACTORS))](rng)

    total = count_tokens(conv.system)

    def add(text: str) -> None:
        nonlocal total
        conv.messages.extend((Message("user", text), Message("assistant", None)))
        total += count_tokens(text) + reply_tokens + 2 * TEMPLATE_ALLOWANCE

    for fact in conv.facts:
        add(f"{fact.statement} {rng.choice(FILLERS)}".strip())
        for _ in range(rng.randint(0, 2)):
            add(distractor())
    while True:
        text = distractor()
        if total + count_tokens(text) + reply_tokens + 2 * TEMPLATE_ALLOWANCE > target:
            break
        add(text)
    asked = iter(rng.sample(conv.facts, len(conv.facts)))
    for letter in tail:
        if letter == "F":
            conv.tail.append(Step("fidelity", distractor()))
        else:
            fact = next(asked)
            if letter == "P":
                fact = fact.paraphrased()
            conv.tail.append(Step("question", fact.question, fact))
    return conv


def make_conversations(
    tune: int, report: int, *, seed: int = 0, count_tokens: Callable[[str], int], **kw: int | str
) -> list[Conversation]:
    """`tune` conversations for tuning, then `report` held-out ones, with distinct seeds."""
    base = seed * 100_003
    return [make_conversation(base + i, count_tokens=count_tokens, split="tune" if i < tune else "report",
                              **kw)  # type: ignore[arg-type]
            for i in range(tune + report)]
