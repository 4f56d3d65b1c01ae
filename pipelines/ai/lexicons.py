"""Sentiment and urgency cues for the local provider.

English sentiment comes from VADER (Hutto & Gilbert, 2014), a maintained, validated lexicon with rules
for negation, intensifiers and punctuation. For Finnish, Swedish, German, Spanish and French, VADER has no
lexicon, so these lists (written for Intake from common customer-service vocabulary; word starts, matched
case-insensitively) give a coarse polarity: (positive - negative) / sqrt(hits + 1), clipped to [-1, 1].
Negations within two words before a cue flip it.
"""

from __future__ import annotations

POSITIVE: dict[str, tuple[str, ...]] = {
    "fi": ("kiitos", "kiitti", "loistava", "hyvä", "mahtava", "upea", "tyytyväi", "ihana", "nopea", "kätevä",
           "suosittel", "onnistui", "toimii taas"),
    "sv": ("tack", "bra", "utmärkt", "fantastisk", "nöjd", "snabb", "toppen", "perfekt", "underbar",
           "rekommender", "fungerar igen"),
    "de": ("danke", "super", "toll", "ausgezeichnet", "zufrieden", "schnell", "perfekt", "großartig",
           "hervorragend", "empfehle", "funktioniert wieder", "gut"),
    "es": ("gracias", "excelente", "genial", "perfecto", "contento", "satisfech", "rápid", "maravillos",
           "estupend", "recomiendo", "funciona de nuevo", "bien"),
    "fr": ("merci", "excellent", "génial", "parfait", "content", "satisfait", "rapide", "formidable",
           "super", "recommande", "fonctionne à nouveau", "bien"),
}
NEGATIVE: dict[str, tuple[str, ...]] = {
    "fi": ("huono", "pettynyt", "surkea", "kamala", "törkeä", "vihainen", "ärsyttä", "ei toimi", "myöhässä",
           "rikki", "valitus", "tyytymätön", "virhe", "ongelma", "kaatuu", "hävinnyt", "väärin"),
    "sv": ("dålig", "besviken", "arg", "fungerar inte", "sämsta", "oacceptabel", "trasig", "försenad",
           "klagomål", "fel", "problem", "kraschar", "irriterad", "aldrig igen"),
    "de": ("schlecht", "enttäuscht", "wütend", "funktioniert nicht", "unverschämt", "kaputt", "verspätet",
           "beschwer", "fehler", "problem", "ärger", "frechheit", "inakzeptabel", "falsch", "nie wieder"),
    "es": ("mal", "pésim", "decepcionad", "enfadad", "no funciona", "roto", "retras", "queja", "error",
           "problema", "inaceptable", "vergüenza", "harto", "nunca más", "incorrect"),
    "fr": ("mauvais", "déçu", "furieux", "ne fonctionne pas", "cassé", "retard", "plainte", "erreur",
           "problème", "inacceptable", "honteux", "nul", "scandaleux", "jamais plus", "énervé"),
}
NEGATIONS: dict[str, tuple[str, ...]] = {
    "fi": ("ei", "en", "et", "emme", "ette", "eivät"), "sv": ("inte", "inga", "aldrig", "ej"),
    "de": ("nicht", "kein", "keine", "nie"), "es": ("no", "nunca", "ni"), "fr": ("pas", "jamais", "ne"),
}
URGENT = ("urgent", "asap", "immediately", "emergency", "right now", "as soon as possible", "critical",
          "kiireellinen", "kiire", "heti", "välittömästi", "brådskande", "omedelbart", "akut", "dringend",
          "sofort", "notfall", "urgente", "inmediat", "cuanto antes", "urgence", "immédiatement", "au plus vite")

# Words so common in short chat lines that a few of them tell the language when a detector on two words
# cannot: greetings, thanks, yes/no and function words. A word shared by several languages votes for each.
_COMMON: dict[str, str] = {
    "en": "hello hi hey thanks thank you yes ok okay please where what when why how is are my your the this that "
          "it not can could would again still any help sorry bye cheers wrong got have has does did i me we",
    "fi": "hei moi moikka kiitos kiitti kiitoksia kyllä joo ei ok okei missä mitä miksi milloin miten on onko "
          "minun mun minä mä se tämä ei enää vielä taas apua anteeksi voitteko voisitteko jo nyt",
    "sv": "hej hejsan tack tackar ja nej okej var vad varför när hur är min mitt mina det den inte kan ni jag "
          "igen fortfarande hjälp förlåt och också har",
    "de": "hallo servus danke dankeschön bitte ja nein wo was warum wann wie ist sind mein meine das die der "
          "nicht kann können sie ich wieder noch hilfe entschuldigung und auch habe gibt es",
    "es": "hola gracias sí si no vale dónde donde qué que por porqué cuándo cómo como es son mi mis el la esto "
          "puede pueden usted yo otra vez todavía ayuda perdón y también tengo hay",
    "fr": "bonjour salut merci oui non d'accord où ou quoi pourquoi quand comment est sont mon ma mes le la ce "
          "pas peut pouvez vous je encore toujours aide pardon désolé et aussi ai",
}
COMMON_WORDS: dict[str, tuple[str, ...]] = {}
for _language, _words in _COMMON.items():
    for _word in _words.split():
        COMMON_WORDS[_word] = (*COMMON_WORDS.get(_word, ()), _language)
