"""The default taxonomy: categories with descriptions, keywords and example messages in six languages.

A tenant may replace it with its own (tenants.settings["taxonomy"], the same shape). Keywords are matched
against the start of words ("rechnung" matches "Rechnungen"), phrases as written; examples are compared by
the local embedder. Suggested teams come from the tenant's `teams` rows (a team whose keywords name the
category, or whose name matches the category's default team).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Category:
    id: str
    description: str
    team: str | None
    keywords: tuple[str, ...]
    examples: tuple[str, ...] = field(default=())


DEFAULT: tuple[Category, ...] = (
    Category(
        "billing", "Invoices, charges, refunds, payments and subscriptions' costs", "Billing",
        ("invoice", "bill", "billed", "charge", "refund", "payment", "paid", "receipt", "credit card", "vat",
         "money back", "lasku", "veloit", "maksu", "maksoin", "hyvity", "rahat takaisin", "kuitti",
         "faktura", "debiter", "betalning", "återbetal", "kvitto", "dragits", "rechnung", "abbuch", "zahlung",
         "erstatt", "rückerstatt", "bezahlt", "quittung", "abgebucht", "factura", "cobr", "reembolso", "pago",
         "tarjeta", "recibo", "facture", "prélev", "paiement", "rembours", "payé", "débité", "reçu"),
        ("I was charged twice for my subscription this month", "Please send me a copy of my invoice",
         "Minut on veloitettu kahdesti", "Jag vill ha pengarna tillbaka för min beställning",
         "Meine Rechnung ist falsch", "Quiero un reembolso de mi pago", "J'ai été débité deux fois"),
    ),
    Category(
        "technical", "Errors, crashes, log-in problems and features that do not work", "Technical support",
        ("error", "crash", "bug", "not working", "doesn't work", "does not work", "broken", "app ", "the app",
         "loading", "sync", "website", "page", "update", "virhe", "kaatuu", "ei toimi", "sovellus",
         "kirjautu", "päivity", "fel", "kraschar", "fungerar inte", "appen", "logga in", "sidan", "fehler",
         "absturz", "stürzt", "funktioniert nicht", "anmeld", "seite", "falla", "no funciona", "aplicación",
         "se cierra", "iniciar sesión", "página", "erreur", "plante", "ne fonctionne pas", "ne marche pas",
         "application", "connexion", "bogue"),
        ("The app crashes every time I open it", "I get an error 500 when I try to log in",
         "Sovellus ei toimi päivityksen jälkeen", "Appen kraschar när jag loggar in",
         "Die App stürzt ständig ab", "La aplicación no funciona desde ayer", "L'application plante au démarrage"),
    ),
    Category(
        "shipping", "Orders, deliveries, parcels, tracking and delivery addresses", "Logistics",
        ("order", "delivery", "deliver", "shipping", "shipped", "package", "parcel", "tracking", "arrived",
         "courier", "tilaus", "tilauks", "toimitus", "paketti", "lähetys", "seuranta", "saapu", "myöhässä",
         "beställning", "leverans", "paket", "spårning", "kommit fram", "levererad", "bestellung",
         "lieferung", "sendung", "versand", "zugestellt", "angekommen", "pedido", "entrega", "envío",
         "paquete", "seguimiento", "llegado", "commande", "livraison", "colis", "suivi", "expédi", "arrivé"),
        ("My order has not arrived yet", "Where is my package? The tracking has not moved",
         "Tilaukseni on myöhässä", "Mitt paket har inte kommit fram", "Wo ist meine Bestellung?",
         "¿Dónde está mi pedido?", "Mon colis n'est toujours pas arrivé"),
    ),
    Category(
        "account", "Accounts, passwords, profiles, e-mail addresses and closing an account", "Accounts",
        ("account", "password", "username", "sign up", "profile", "two-factor", "2fa", "e-mail address",
         "email address", "tili", "salasana", "käyttäjä", "profiili", "sähköpostiosoit", "konto",
         "lösenord", "användar", "e-postadress", "passwort", "benutzer", "e-mail-adresse", "cuenta",
         "contraseña", "usuario", "perfil", "correo electrónico", "compte", "mot de passe", "identifiant",
         "profil", "adresse e-mail"),
        ("I forgot my password and the reset link does not arrive", "Please delete my account",
         "Haluan vaihtaa tilini sähköpostiosoitteen", "Jag vill avsluta mitt konto",
         "Ich möchte mein Passwort ändern", "No puedo acceder a mi cuenta", "Je veux supprimer mon compte"),
    ),
    Category(
        "sales", "Prices, quotes, plans, upgrades and buying for a company", "Sales",
        ("pricing", "price list", "quote", "discount", "buy", "purchase", "plan", "upgrade", "demo",
         "enterprise", "interested", "licen", "tarjous", "alennus", "ostaa", "hinnasto", "kiinnostunut",
         "offert", "rabatt", "köpa", "prislista", "intresserad", "uppgrader", "angebot", "kaufen",
         "preisliste", "interessiert", "lizenz", "cotización", "presupuesto", "descuento", "comprar",
         "interesad", "devis", "remise", "acheter", "tarif", "intéressé", "licence"),
        ("Do you offer a discount for 50 licences?", "I'd like a quote for the enterprise plan",
         "Voisitteko lähettää tarjouksen yrityksellemme", "Vi är intresserade av att köpa 20 licenser",
         "Können Sie uns ein Angebot machen?", "Me interesa comprar el plan anual",
         "Pouvez-vous m'envoyer un devis ?"),
    ),
    Category(
        "complaint", "Dissatisfaction with the service, staff or handling, demands to escalate", "Customer care",
        ("unacceptable", "terrible", "worst", "angry", "disappointed", "complaint", "furious", "ridiculous",
         "never again", "awful", "rude", "manager", "pettynyt", "valitus", "surkea", "kamala", "törkeä",
         "tyytymätön", "klagomål", "besviken", "oacceptabel", "sämsta", "arg", "beschwerde", "enttäuscht",
         "unverschämt", "inakzeptabel", "frechheit", "queja", "decepcionad", "inaceptable", "pésimo",
         "vergüenza", "reclamación", "plainte", "déçu", "inadmissible", "inacceptable", "honteux",
         "scandaleux", "réclamation"),
        ("This is unacceptable, I want to speak to a manager", "Worst customer service I have ever had",
         "Olen todella pettynyt palveluunne", "Jag är mycket besviken på er service",
         "Das ist eine Frechheit, ich möchte mich beschweren", "Es inaceptable, quiero poner una queja",
         "C'est scandaleux, je veux déposer une plainte"),
    ),
    Category(
        "spam", "Unsolicited offers, scams and marketing not meant for support", None,
        ("crypto", "bitcoin", "seo", "backlink", "viagra", "winner", "lottery", "investment opportunity",
         "click here", "casino", "guaranteed", "rank your website", "first page of google", "forex",
         "make money", "loan offer", "voitit", "kasino", "vinnare", "gewinner", "ganador", "gagnant"),
        ("Boost your website to the first page of Google with our SEO service", "Invest in bitcoin today",
         "Congratulations, you are our lottery winner, click here"),
    ),
    Category(
        "auto_reply", "Automatic replies: out of office, vacation notices, delivery receipts", None,
        ("out of office", "automatic reply", "auto-reply", "autoreply", "on vacation", "away until",
         "limited access to email", "poissa toimistolta", "automaattinen vastaus", "lomalla", "frånvaro",
         "automatiskt svar", "semester", "abwesen", "automatische antwort", "außer haus", "urlaub",
         "fuera de la oficina", "respuesta automática", "vacaciones", "absent du bureau", "réponse automatique",
         "congés"),
        ("I am out of the office until Monday with limited access to email",
         "Olen lomalla 15.7. asti", "Jag är på semester till och med vecka 32",
         "Ich bin bis zum 3. August nicht im Büro", "Estoy fuera de la oficina hasta el lunes",
         "Je suis absent du bureau jusqu'au 5 août"),
    ),
)


def from_settings(raw: Any) -> tuple[Category, ...]:
    """A tenant's taxonomy from tenants.settings["taxonomy"], or the default."""
    if not isinstance(raw, list) or not raw:
        return DEFAULT
    categories = []
    for item in raw:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            categories.append(Category(
                item["id"], str(item.get("description", "")), item.get("team"),
                tuple(str(k).lower() for k in item.get("keywords", [])),
                tuple(str(e) for e in item.get("examples", [])),
            ))
    return tuple(categories) or DEFAULT
