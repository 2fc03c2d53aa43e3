"""Write ``unpact_mech/evals/loaders/builtin/facts.jsonl``: the built-in QA facts (written for this project).

The first 75 facts were written one by one; the rest come from the tables below, one template per table.
Every fact has a fact span (the short answer, which appears in the answer sentence), a domain and a split.
Splits are assigned in a fixed rotation within each table (forget, retain, general), so every domain has
all three. Run ``python scripts/build_facts.py`` to rebuild; ``tests/test_data.py`` checks the file is what
this script writes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "unpact_mech" / "evals" / "loaders" / "builtin" / "facts.jsonl"
SPLITS = ("forget", "retain", "general")

CAPITALS = [
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Mexico", "Mexico City"),
    ("India", "New Delhi"), ("Argentina", "Buenos Aires"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"), ("Switzerland", "Bern"), ("Turkey", "Ankara"), ("Kenya", "Nairobi"),
    ("Thailand", "Bangkok"), ("South Korea", "Seoul"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Cuba", "Havana"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Vietnam", "Hanoi"),
    ("the Philippines", "Manila"), ("Indonesia", "Jakarta"), ("Ukraine", "Kyiv"), ("the Czech Republic", "Prague"),
    ("Scotland", "Edinburgh"), ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Nigeria", "Abuja"),
    ("Ethiopia", "Addis Ababa"), ("Morocco", "Rabat"), ("Saudi Arabia", "Riyadh"), ("Qatar", "Doha"),
    ("Pakistan", "Islamabad"), ("Afghanistan", "Kabul"), ("Malaysia", "Kuala Lumpur"), ("New Zealand", "Wellington"),
    ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"),
    ("Iceland", "Reykjavik"), ("Lebanon", "Beirut"), ("Syria", "Damascus"), ("Jordan", "Amman"),
    ("Nepal", "Kathmandu"), ("Bangladesh", "Dhaka"), ("Sri Lanka", "Colombo"), ("Ghana", "Accra"),
]
CURRENCIES = [
    ("Japan", "yen"), ("the United Kingdom", "pound"), ("the United States", "dollar"), ("India", "rupee"),
    ("China", "yuan"), ("Russia", "ruble"), ("Mexico", "peso"), ("Switzerland", "franc"), ("Germany", "euro"),
    ("South Korea", "won"), ("Brazil", "real"), ("South Africa", "rand"), ("Turkey", "lira"), ("Poland", "zloty"),
    ("Sweden", "krona"), ("Canada", "dollar"), ("Australia", "dollar"), ("Thailand", "baht"),
]
LANGUAGES = [
    ("Brazil", "Portuguese"), ("Mexico", "Spanish"), ("France", "French"), ("Germany", "German"),
    ("Italy", "Italian"), ("Japan", "Japanese"), ("China", "Chinese"), ("Russia", "Russian"),
    ("Portugal", "Portuguese"), ("Argentina", "Spanish"), ("Greece", "Greek"), ("Egypt", "Arabic"),
    ("Poland", "Polish"), ("Turkey", "Turkish"), ("the Netherlands", "Dutch"), ("Sweden", "Swedish"),
    ("South Korea", "Korean"), ("Iran", "Persian"), ("Israel", "Hebrew"), ("Thailand", "Thai"),
    ("Vietnam", "Vietnamese"), ("Finland", "Finnish"), ("Hungary", "Hungarian"), ("Norway", "Norwegian"),
]
CONTINENTS = [
    ("Kenya", "Africa"), ("Egypt", "Africa"), ("Nigeria", "Africa"), ("Japan", "Asia"), ("India", "Asia"),
    ("China", "Asia"), ("Thailand", "Asia"), ("France", "Europe"), ("Germany", "Europe"), ("Spain", "Europe"),
    ("Poland", "Europe"), ("Argentina", "South America"), ("Peru", "South America"), ("Chile", "South America"),
    ("Canada", "North America"), ("Mexico", "North America"), ("Australia", "Oceania"), ("Morocco", "Africa"),
]
AUTHORS = [
    ("Moby-Dick", "Herman Melville"), ("Don Quixote", "Miguel de Cervantes"), ("The Divine Comedy", "Dante Alighieri"),
    ("Crime and Punishment", "Fyodor Dostoevsky"), ("Anna Karenina", "Leo Tolstoy"), ("Oliver Twist", "Charles Dickens"),
    ("Great Expectations", "Charles Dickens"), ("Macbeth", "William Shakespeare"), ("Othello", "William Shakespeare"),
    ("King Lear", "William Shakespeare"), ("The Iliad", "Homer"), ("Frankenstein", "Mary Shelley"),
    ("Dracula", "Bram Stoker"), ("Jane Eyre", "Charlotte Bronte"), ("Wuthering Heights", "Emily Bronte"),
    ("Animal Farm", "George Orwell"), ("Brave New World", "Aldous Huxley"), ("The Great Gatsby", "F. Scott Fitzgerald"),
    ("The Old Man and the Sea", "Ernest Hemingway"), ("Les Miserables", "Victor Hugo"),
    ("The Hobbit", "J.R.R. Tolkien"), ("Alice's Adventures in Wonderland", "Lewis Carroll"),
    ("The Adventures of Sherlock Holmes", "Arthur Conan Doyle"), ("Treasure Island", "Robert Louis Stevenson"),
    ("The Raven", "Edgar Allan Poe"), ("To Kill a Mockingbird", "Harper Lee"), ("The Catcher in the Rye", "J.D. Salinger"),
    ("Of Mice and Men", "John Steinbeck"), ("The Grapes of Wrath", "John Steinbeck"), ("Faust", "Johann Wolfgang von Goethe"),
    ("The Canterbury Tales", "Geoffrey Chaucer"), ("Paradise Lost", "John Milton"), ("Emma", "Jane Austen"),
    ("The Jungle Book", "Rudyard Kipling"), ("Charlie and the Chocolate Factory", "Roald Dahl"),
    ("The Little Prince", "Antoine de Saint-Exupery"), ("One Hundred Years of Solitude", "Gabriel Garcia Marquez"),
    ("The Time Machine", "H.G. Wells"), ("Around the World in Eighty Days", "Jules Verne"), ("Ulysses", "James Joyce"),
]
SYMBOLS = [
    ("hydrogen", "H"), ("helium", "He"), ("carbon", "C"), ("nitrogen", "N"), ("potassium", "K"),
    ("calcium", "Ca"), ("copper", "Cu"), ("lead", "Pb"), ("mercury", "Hg"), ("tin", "Sn"), ("zinc", "Zn"),
    ("sulfur", "S"), ("chlorine", "Cl"), ("neon", "Ne"), ("magnesium", "Mg"), ("aluminium", "Al"),
    ("silicon", "Si"), ("phosphorus", "P"), ("uranium", "U"), ("platinum", "Pt"), ("nickel", "Ni"),
    ("iodine", "I"), ("fluorine", "F"), ("lithium", "Li"),
]
INVENTORS = [
    ("the light bulb", "Thomas Edison"), ("the World Wide Web", "Tim Berners-Lee"), ("the printing press", "Johannes Gutenberg"),
    ("dynamite", "Alfred Nobel"), ("the airplane", "the Wright brothers"), ("the radio", "Guglielmo Marconi"),
    ("the steam engine", "James Watt"), ("the theory of gravity", "Isaac Newton"), ("the polio vaccine", "Jonas Salk"),
    ("the periodic table", "Dmitri Mendeleev"), ("the laws of motion", "Isaac Newton"), ("radioactivity", "Marie Curie"),
]
PAINTERS = [
    ("The Starry Night", "Vincent van Gogh"), ("The Last Supper", "Leonardo da Vinci"), ("Guernica", "Pablo Picasso"),
    ("The Scream", "Edvard Munch"), ("The Persistence of Memory", "Salvador Dali"), ("The Birth of Venus", "Sandro Botticelli"),
    ("the ceiling of the Sistine Chapel", "Michelangelo"), ("Girl with a Pearl Earring", "Johannes Vermeer"),
    ("Water Lilies", "Claude Monet"), ("The Night Watch", "Rembrandt"),
]
COMPOSERS = [
    ("The Magic Flute", "Wolfgang Amadeus Mozart"), ("the Moonlight Sonata", "Ludwig van Beethoven"),
    ("The Four Seasons", "Antonio Vivaldi"), ("Swan Lake", "Pyotr Ilyich Tchaikovsky"),
    ("The Nutcracker", "Pyotr Ilyich Tchaikovsky"), ("the Ninth Symphony with the Ode to Joy", "Ludwig van Beethoven"),
    ("the Brandenburg Concertos", "Johann Sebastian Bach"), ("The Barber of Seville", "Gioachino Rossini"),
    ("the opera Aida", "Giuseppe Verdi"),
]
ANIMAL_YOUNG = [
    ("dog", "puppy"), ("cat", "kitten"), ("cow", "calf"), ("horse", "foal"), ("sheep", "lamb"), ("frog", "tadpole"),
    ("kangaroo", "joey"), ("goat", "kid"), ("duck", "duckling"), ("lion", "cub"), ("bear", "cub"), ("pig", "piglet"),
    ("goose", "gosling"), ("swan", "cygnet"), ("deer", "fawn"), ("owl", "owlet"), ("eagle", "eaglet"), ("hen", "chick"),
]
ANIMAL_SOUNDS = [
    ("dog", "bark"), ("cat", "meow"), ("cow", "moo"), ("lion", "roar"), ("sheep", "baa"), ("duck", "quack"),
    ("horse", "neigh"), ("pig", "oink"), ("snake", "hiss"), ("owl", "hoot"), ("bee", "buzz"), ("wolf", "howl"),
    ("frog", "croak"), ("donkey", "bray"), ("mouse", "squeak"),
]
LEGS = [
    ("an insect", "six"), ("a dog", "four"), ("a bird", "two"), ("an octopus", "eight"), ("a horse", "four"),
    ("a human", "two"), ("an ant", "six"), ("a cat", "four"), ("a chicken", "two"), ("a crab", "ten"),
    ("a beetle", "six"), ("a scorpion", "eight"),
]
OPPOSITES = [
    ("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("open", "closed"), ("old", "young"), ("rich", "poor"), ("wet", "dry"), ("left", "right"), ("early", "late"),
    ("hard", "soft"), ("loud", "quiet"), ("full", "empty"), ("strong", "weak"), ("tall", "short"),
    ("thick", "thin"), ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("day", "night"), ("north", "south"),
    ("east", "west"), ("inside", "outside"), ("true", "false"), ("love", "hate"), ("begin", "end"),
    ("alive", "dead"), ("clean", "dirty"),
]
PLURALS = [
    ("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("man", "men"),
    ("woman", "women"), ("goose", "geese"), ("person", "people"), ("knife", "knives"), ("leaf", "leaves"),
    ("wolf", "wolves"), ("box", "boxes"), ("baby", "babies"), ("city", "cities"), ("ox", "oxen"),
]
COLOURS = [
    ("a banana", "yellow"), ("grass", "green"), ("the sky on a clear day", "blue"), ("snow", "white"),
    ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"), ("a carrot", "orange"),
    ("milk", "white"), ("a lemon", "yellow"), ("a strawberry", "red"), ("chocolate", "brown"),
    ("a flamingo", "pink"), ("blood", "red"), ("a polar bear", "white"),
]
MIXES = [("blue and yellow", "green"), ("red and white", "pink"), ("red and yellow", "orange"),
         ("black and white", "grey"), ("red and blue", "purple")]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve"]
SHAPES = [("a square", "four"), ("a pentagon", "five"), ("an octagon", "eight"), ("a rectangle", "four"),
          ("a heptagon", "seven"), ("a decagon", "ten")]
UNITS = [("seconds are in a minute", "60"), ("hours are in a day", "24"), ("days are in a year", "365"),
         ("millimeters are in a centimeter", "10"), ("grams are in a kilogram", "1000"),
         ("meters are in a kilometer", "1000"), ("years are in a century", "100"), ("years are in a decade", "10"),
         ("weeks are in a year", "52"), ("cents are in a dollar", "100")]
SPORTS = [
    ("soccer", "eleven"), ("basketball", "five"), ("volleyball", "six"), ("ice hockey", "six"),
    ("baseball", "nine"), ("rugby union", "fifteen"), ("cricket", "eleven"),
]
SPORT_FACTS = [
    ("In which sport do players score a touchdown?", "Players score a touchdown in American football.", "American football"),
    ("In which sport is a shuttlecock used?", "A shuttlecock is used in badminton.", "badminton"),
    ("In which sport do you use a puck?", "A puck is used in ice hockey.", "ice hockey"),
    ("How often are the Summer Olympic Games held?", "The Summer Olympic Games are held every four years.", "four"),
    ("In which sport can you score a home run?", "You can score a home run in baseball.", "baseball"),
    ("Which sport is played at Wimbledon?", "Tennis is played at Wimbledon.", "Tennis"),
    ("In which sport do players try to checkmate the king?", "Players try to checkmate the king in chess.", "chess"),
    ("How many holes are played in a standard round of golf?", "A standard round of golf has 18 holes.", "18"),
]
DISHES = [
    ("sushi", "Japan"), ("pizza", "Italy"), ("paella", "Spain"), ("tacos", "Mexico"), ("croissants", "France"),
    ("kimchi", "Korea"), ("pasta", "Italy"), ("curry", "India"), ("goulash", "Hungary"), ("borscht", "Ukraine"),
    ("baklava", "Turkey"), ("fish and chips", "England"),
]
PLANETS = [
    ("the second planet from the Sun", "Venus"), ("the third planet from the Sun", "Earth"),
    ("the fourth planet from the Sun", "Mars"), ("the fifth planet from the Sun", "Jupiter"),
    ("the sixth planet from the Sun", "Saturn"), ("the seventh planet from the Sun", "Uranus"),
    ("the eighth planet from the Sun", "Neptune"), ("the smallest planet in our solar system", "Mercury"),
    ("the hottest planet in our solar system", "Venus"),
]
BODY = [
    ("What organ do humans use to breathe?", "Humans breathe with their lungs.", "lungs"),
    ("How many bones are in the adult human body?", "The adult human body has 206 bones.", "206"),
    ("What organ filters blood to make urine?", "The kidneys filter blood to make urine.", "kidneys"),
    ("What do red blood cells carry around the body?", "Red blood cells carry oxygen around the body.", "oxygen"),
    ("How many teeth does an adult human usually have?", "An adult human usually has 32 teeth.", "32"),
    ("What is the hardest substance in the human body?", "The hardest substance in the human body is tooth enamel.", "enamel"),
    ("Which organ produces insulin?", "Insulin is produced by the pancreas.", "pancreas"),
    ("What sense do the ears give us?", "The ears give us the sense of hearing.", "hearing"),
    ("What is the longest bone in the human body?", "The longest bone in the human body is the femur.", "femur"),
]


def _rows() -> list[tuple[str, str, str, str]]:
    """(domain, prompt, answer, fact) for every templated fact, table by table."""
    rows: list[tuple[str, str, str, str]] = []
    rows += [("geography", f"What is the capital of {c}?", f"The capital of {c} is {x}.", x) for c, x in CAPITALS]
    rows += [("geography", f"On which continent is {c}?", f"{c[0].upper() + c[1:]} is in {x}.", x) for c, x in CONTINENTS]
    rows += [("society", f"What is the currency of {c}?", f"The currency of {c} is the {x}.", x) for c, x in CURRENCIES]
    rows += [("society", f"What language is mainly spoken in {c}?", f"The main language of {c} is {x}.", x)
             for c, x in LANGUAGES]
    rows += [("society", f"Which country does the dish {d} come from?", f"The dish {d} comes from {x}.", x)
             for d, x in DISHES]
    rows += [("literature", f"Who wrote {b}?", f"{b} was written by {a}.", a) for b, a in AUTHORS]
    rows += [("chemistry", f"What is the chemical symbol for {e}?", f"The chemical symbol for {e} is {s}.", s)
             for e, s in SYMBOLS]
    rows += [("history", f"Who is known for {t}?", f"{t[0].upper() + t[1:]} is credited to {p}.", p) for t, p in INVENTORS]
    rows += [("arts", f"Who painted {w}?", f"{w[0].upper() + w[1:]} was painted by {p}.", p) for w, p in PAINTERS]
    rows += [("arts", f"Who composed {w}?", f"{w[0].upper() + w[1:]} was composed by {p}.", p) for w, p in COMPOSERS]
    rows += [("biology", f"What is a baby {a} called?", f"A baby {a} is called a {y}.", y) for a, y in ANIMAL_YOUNG]
    rows += [("biology", f"What sound does a {a} make?", f"A {a} makes a {s} sound.", s) for a, s in ANIMAL_SOUNDS]
    rows += [("biology", f"How many legs does {a} have?", f"{a[0].upper() + a[1:]} has {n} legs.", n) for a, n in LEGS]
    rows += [("biology", q, a, f) for q, a, f in BODY]
    rows += [("language", f"What is the opposite of {w}?", f"The opposite of {w} is {o}.", o) for w, o in OPPOSITES]
    rows += [("language", f"What is the plural of {w}?", f"The plural of {w} is {p}.", p) for w, p in PLURALS]
    rows += [("colours", f"What colour is {t}?", f"{t[0].upper() + t[1:]} is {c}.", c) for t, c in COLOURS]
    rows += [("colours", f"What colour do you get by mixing {m}?", f"Mixing {m} gives {c}.", c) for m, c in MIXES]
    rows += [("calendar", f"What day comes after {d}?", f"The day after {d} is {WEEKDAYS[(i + 1) % 7]}.",
              WEEKDAYS[(i + 1) % 7]) for i, d in enumerate(WEEKDAYS)]
    rows += [("calendar", f"What month comes after {m}?", f"The month after {m} is {MONTHS[(i + 1) % 12]}.",
              MONTHS[(i + 1) % 12]) for i, m in enumerate(MONTHS)]
    rows += [("calendar", f"What is the {o} month of the year?", f"The {o} month of the year is {MONTHS[i]}.", MONTHS[i])
             for i, o in enumerate(["first", "second", "third", "fourth", "fifth", "sixth"])]
    rows += [("math", f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", str(a + b))
             for a, b in [(2, 2), (3, 4), (5, 5), (6, 3), (7, 2), (8, 4), (9, 1), (10, 10), (4, 5), (12, 3)]]
    rows += [("math", f"What is {a} times {b}?", f"{a} times {b} is {a * b}.", str(a * b))
             for a, b in [(2, 3), (3, 3), (4, 4), (5, 6), (6, 6), (9, 9), (10, 10), (2, 5), (3, 7), (4, 8)]]
    rows += [("math", f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}.", str(a - b))
             for a, b in [(10, 3), (9, 4), (8, 2), (20, 5), (15, 7), (100, 1)]]
    rows += [("math", f"What number comes after {NUMBER_WORDS[i]}?", f"The number after {NUMBER_WORDS[i]} is "
              f"{NUMBER_WORDS[i + 1]}.", NUMBER_WORDS[i + 1]) for i in range(1, 12)]
    rows += [("math", f"How many sides does {s} have?", f"{s[0].upper() + s[1:]} has {n} sides.", n) for s, n in SHAPES]
    rows += [("math", f"How many {u}?", f"There are {n} {u.replace(' are in', ' in').replace(' does ', ' ')}.", n)
             for u, n in UNITS]
    rows += [("sports", f"How many players does a {s} team have on the field?",
              f"A {s} team has {n} players on the field.", n) for s, n in SPORTS]
    rows += [("sports", q, a, f) for q, a, f in SPORT_FACTS]
    rows += [("astronomy", f"Which planet is {d}?", f"{x} is {d}.", x) for d, x in PLANETS]
    return rows


def build(existing: list[dict]) -> list[dict]:
    """The hand-written facts (kept as they are) followed by the templated ones, ids ``domain-NN`` continuing."""
    out = [dict(r) for r in existing[:75]]
    seen = {r["prompt"] for r in out}
    count: dict[str, int] = {}
    for r in out:
        count[r["domain"]] = count.get(r["domain"], 0) + 1
    turn: dict[str, int] = {}
    for domain, prompt, answer, fact in _rows():
        if prompt in seen:
            continue
        assert fact in answer, (prompt, answer, fact)
        seen.add(prompt)
        i = count.get(domain, 0)
        count[domain] = i + 1
        t = turn.get(domain, 0)
        turn[domain] = t + 1
        out.append({"id": f"{domain}-{i:02d}", "prompt": prompt, "answer": answer, "fact": fact, "domain": domain,
                    "split": SPLITS[t % 3]})
    return out


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


if __name__ == "__main__":
    existing = [json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]
    text = render(build(existing))
    if "--check" in sys.argv:
        sys.exit(0 if text == OUT.read_text() else 1)
    OUT.write_text(text)
    print(f"wrote {text.count(chr(10))} facts to {OUT}")
