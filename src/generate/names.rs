//! French first names, last names and e-mail domains, in rough order of frequency.

/// Female first names, most frequent first (a mix of generations, as a store's clientele is).
#[rustfmt::skip]
pub const FEMALE: &[&str] = &[
    "Marie", "Nathalie", "Isabelle", "Sylvie", "Catherine", "Sophie", "Christine", "Valérie",
    "Sandrine", "Céline", "Stéphanie", "Véronique", "Camille", "Julie", "Laura", "Emma", "Léa",
    "Chloé", "Manon", "Sarah", "Aurélie", "Émilie", "Caroline", "Anne", "Martine", "Françoise",
    "Monique", "Brigitte", "Hélène", "Patricia", "Nicole", "Virginie", "Laetitia", "Élodie",
    "Mélanie", "Audrey", "Pauline", "Claire", "Marion", "Lucie", "Charlotte", "Inès", "Jade",
    "Louise", "Alice", "Zoé", "Anaïs", "Agnès", "Corinne", "Delphine", "Karine", "Florence",
    "Danielle", "Josiane", "Jacqueline", "Chantal", "Annie", "Mathilde", "Juliette", "Clémence",
    "Noémie", "Margaux", "Océane", "Amandine", "Gaëlle", "Nadia", "Fatima", "Yasmine", "Sonia",
    "Anne-Sophie", "Marie-Claire", "Marie-Hélène", "Anne-Laure", "Rose", "Ambre", "Elsa", "Solène",
    "Maëlys", "Bérénice",
];

#[rustfmt::skip]
pub const MALE: &[&str] = &[
    "Jean", "Philippe", "Michel", "Alain", "Patrick", "Nicolas", "Christophe", "Pierre",
    "Christian", "Éric", "Frédéric", "Laurent", "Stéphane", "David", "Julien", "Sébastien",
    "Thomas", "Olivier", "Daniel", "Bernard", "Jacques", "François", "Thierry", "Pascal", "Vincent",
    "Alexandre", "Antoine", "Maxime", "Hugo", "Lucas", "Louis", "Gabriel", "Arthur", "Léo",
    "Nathan", "Mathieu", "Guillaume", "Romain", "Jérôme", "Cédric", "Fabrice", "Didier", "Gérard",
    "Dominique", "Yves", "René", "Bruno", "Franck", "Benoît", "Damien", "Kévin", "Anthony",
    "Florian", "Quentin", "Clément", "Adrien", "Baptiste", "Jules", "Raphaël", "Théo", "Mohamed",
    "Karim", "Mehdi", "Yann", "Loïc", "Gaël", "Hervé", "Joël", "Noël", "Jean-Pierre", "Jean-Luc",
    "Jean-François", "Jean-Marc", "Paul", "Henri", "Victor", "Noah", "Timothée", "Maël",
];

/// Last names, most frequent first; a few carry an apostrophe or a space, as real ones do.
#[rustfmt::skip]
pub const LAST: &[&str] = &[
    "Martin", "Bernard", "Thomas", "Petit", "Robert", "Richard", "Durand", "Dubois", "Moreau",
    "Laurent", "Simon", "Michel", "Lefèvre", "Leroy", "Roux", "David", "Bertrand", "Morel",
    "Fournier", "Girard", "Bonnet", "Dupont", "Lambert", "Fontaine", "Rousseau", "Vincent",
    "Muller", "Lefebvre", "Faure", "André", "Mercier", "Blanc", "Guérin", "Boyer", "Garnier",
    "Chevalier", "François", "Legrand", "Gauthier", "Garcia", "Perrin", "Robin", "Clément", "Morin",
    "Nicolas", "Henry", "Roussel", "Mathieu", "Gautier", "Masson", "Marchand", "Duval", "Denis",
    "Dumont", "Marie", "Lemaire", "Noël", "Meyer", "Dufour", "Meunier", "Brun", "Blanchard",
    "Giraud", "Joly", "Rivière", "Lucas", "Brunet", "Gaillard", "Barbier", "Arnaud", "Martinez",
    "Gérard", "Roche", "Renard", "Schmitt", "Roy", "Leroux", "Colin", "Vidal", "Caron", "Picard",
    "Roger", "Fabre", "Aubert", "Lemoine", "Renaud", "Dumas", "Lacroix", "Olivier", "Philippe",
    "Bourgeois", "Pierre", "Benoît", "Rey", "Leclerc", "Payet", "Rolland", "Leclercq", "Guillaume",
    "Lecomte", "Lopez", "Jean", "Dupuy", "Guillot", "Hubert", "Berger", "Carpentier", "Sanchez",
    "Dupuis", "Moulin", "Louis", "Deschamps", "Huet", "Vasseur", "Perez", "Boucher", "Fleury",
    "Royer", "Klein", "Jacquet", "Adam", "Paris", "Poirier", "Marty", "Aubry", "Guyot", "Carré",
    "Charles", "Renault", "Charpentier", "Ménard", "Maillard", "Baron", "Bertin", "Bailly", "Hervé",
    "Schneider", "Fernandez", "Le Gall", "Collet", "Léger", "Bouvier", "Julien", "Prévost",
    "Millet", "Perrot", "Daniel", "Le Roux", "Cousin", "Germain", "Breton", "Besson", "Langlois",
    "Rémy", "Le Goff", "Pelletier", "Lévêque", "Perrier", "Leblanc", "Barré", "Lebrun", "Marchal",
    "Weber", "Mallet", "Hamon", "Boulanger", "Jacob", "Monnier", "Michaud", "Rodriguez", "Guichard",
    "Gillet", "Étienne", "Grondin", "Poulain", "Tessier", "Chevallier", "Collin", "Chauvin",
    "Da Silva", "Bouchet", "Gay", "Lemaître", "Bénard", "Maréchal", "Humbert", "Reynaud", "Antoine",
    "Hoarau", "Perret", "Barthélemy", "Cordier", "Pichon", "Lejeune", "Gilbert", "Lamy", "Delaunay",
    "Pasquier", "Carlier", "Laporte", "Nguyen", "N'Diaye", "D'Almeida", "Diallo", "Haddad",
    "Benali", "Traoré", "De Oliveira", "Dos Santos", "L'Hermite", "D'Andrea",
];

/// Personal e-mail providers of French consumers, with rough market shares.
pub const EMAIL_DOMAINS: &[(&str, u32)] = &[
    ("gmail.com", 380),
    ("hotmail.fr", 110),
    ("orange.fr", 100),
    ("yahoo.fr", 70),
    ("free.fr", 65),
    ("outlook.fr", 50),
    ("laposte.net", 45),
    ("sfr.fr", 40),
    ("wanadoo.fr", 35),
    ("icloud.com", 35),
    ("live.fr", 25),
    ("hotmail.com", 20),
    ("outlook.com", 15),
    ("neuf.fr", 8),
    ("protonmail.com", 5),
];

/// Domains people mistype for the one they meant (the mistake makes a different identifier).
pub const DOMAIN_TYPOS: &[(&str, &str)] = &[
    ("gmail.com", "gmial.com"),
    ("gmail.com", "gmail.fr"),
    ("gmail.com", "gmail.con"),
    ("hotmail.fr", "hotmial.fr"),
    ("hotmail.fr", "hotmail.com"),
    ("orange.fr", "orange.com"),
    ("yahoo.fr", "yahoo.com"),
    ("wanadoo.fr", "wanado.fr"),
];

/// Frequency weights by rank, so that Martin is more common than Grondin (a Zipf-like curve).
pub fn rank_weights(n: usize) -> Vec<u64> {
    let mut total = 0u64;
    (0..n)
        .map(|rank| {
            total += 100_000 / (rank as u64 + 6);
            total
        })
        .collect()
}

/// Lower-case ASCII letters of a name, as it ends up in an e-mail address ("Lefèvre" → "lefevre").
pub fn ascii_letters(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let mapped = match c {
            'à' | 'â' | 'ä' | 'À' | 'Â' => "a",
            'é' | 'è' | 'ê' | 'ë' | 'É' | 'È' | 'Ê' => "e",
            'î' | 'ï' | 'Î' => "i",
            'ô' | 'ö' | 'Ô' => "o",
            'ù' | 'û' | 'ü' => "u",
            'ç' | 'Ç' => "c",
            'ÿ' => "y",
            'œ' => "oe",
            'æ' => "ae",
            c if c.is_ascii_alphabetic() => {
                out.push(c.to_ascii_lowercase());
                continue;
            }
            _ => continue,
        };
        out.push_str(mapped);
    }
    out
}

/// A name without its accents, as some tills and old CRMs store it ("Hélène" → "Helene").
pub fn strip_accents(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'à' | 'â' | 'ä' => 'a',
            'À' | 'Â' => 'A',
            'é' | 'è' | 'ê' | 'ë' => 'e',
            'É' | 'È' | 'Ê' => 'E',
            'î' | 'ï' => 'i',
            'Î' => 'I',
            'ô' | 'ö' => 'o',
            'Ô' => 'O',
            'ù' | 'û' | 'ü' => 'u',
            'ç' => 'c',
            'Ç' => 'C',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_email_letters() {
        assert_eq!(ascii_letters("Lefèvre"), "lefevre");
        assert_eq!(ascii_letters("N'Diaye"), "ndiaye");
        assert_eq!(ascii_letters("Anne-Sophie"), "annesophie");
        assert_eq!(ascii_letters("Le Goff"), "legoff");
        assert_eq!(strip_accents("Hélène Noël"), "Helene Noel");
    }
}
