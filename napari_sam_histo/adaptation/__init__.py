"""Online adaptation: the annotator learning from the slide being annotated, in the background,
while the pathologist works (a decoder copy, a slide prior and a slide refiner, each offered only
past a never-worse gate), and the sequential benchmark that measures it. No Qt here."""
